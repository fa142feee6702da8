"""Stage 1, intake: the watched inbox, sidecar JSON and audio probing/decoding.
"""
