"""nluflow's HTTP servers, kept apart from the library: ``serve`` (a project's active model behind Rasa's
``/model/parse`` API, with hot swap), ``relay`` (annotation-tool webhooks in, Prefect events out) and the
connection limits both run under (``server_limits``)."""
