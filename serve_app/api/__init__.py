"""The HTTP surface: routes, request parsing, chat, answer shapes, auth, admission, access log.
May import: every layer below (documents and down); the only package that imports FastAPI."""
