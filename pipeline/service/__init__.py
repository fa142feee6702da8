"""The service: the inbox supervisor, Prefect flows and the plain-function path from
audio to draft that they call.
"""
