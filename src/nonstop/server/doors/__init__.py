"""The front doors: one module per client protocol. A door reads and checks the
request in its protocol, hands it to the pipeline as Anthropic Messages, and has the
relay commit the reply through the writer for its protocol.

To add a front door: a Door subclass with its routes, and a Writer for its protocol
(server/writers.py); register the routes in server/app.py.
"""
