"""Stage 5, review: the review queue, draft versions, users, signing, learning from
corrections. The web workbench (``pipeline.web``) sits on top of it.
"""
