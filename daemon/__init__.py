"""liftshift daemon package."""
