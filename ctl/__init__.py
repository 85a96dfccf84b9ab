"""liftshift ctl package."""
