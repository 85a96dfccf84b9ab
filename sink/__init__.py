"""liftshift sink package."""
