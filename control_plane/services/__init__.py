"""What the routes call: planning, dispatch, finalisation, reconciliation, uploads, archives."""
