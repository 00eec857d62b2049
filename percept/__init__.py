"""percept: the admin CLI that ties the trainer, the model store, the service and the worker together."""
