"""A tiny customer-support bot: the application code whose LM programs the tests gate."""
