"""The two web front ends, side by side over the same services: the JSON API (`api/`) and
the HTML pages for people (`ui/`). What both need (dependencies, access control, presenters,
form reading, error answers) lives here, in their common parent."""
