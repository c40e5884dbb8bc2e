"""The hub's HTTP resources, one router per resource."""
