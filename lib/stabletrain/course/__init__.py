"""Helpers that only the course's notebooks need (figures and demonstrations).

Nothing here is part of the library's contract for your own models: import from
``stabletrain`` for that. Each module serves one notebook or one lesson.
"""
