"""Kubernetes names and label values derived from user ids.

User ids come from tokens and may hold anything (``Alice@Example.org``, ``auth0|1234``, 200
characters).  Object names must be DNS labels (``[a-z0-9-]``, at most 63, alphanumeric ends)
and label values ``[A-Za-z0-9._-]`` (at most 63, alphanumeric ends).  When the id has to be
changed to fit, a hash of the whole id is appended, so two ids never share a name.
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
HASH_LEN = 8


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def dns_label(prefix: str, user: str) -> str:
    """``prefix + user`` as a valid DNS label; a hash suffix whenever the id was changed."""
    body = re.sub(r"[^a-z0-9-]+", "-", user.lower()).strip("-")
    name = f"{prefix}{body}".strip("-")
    if body != user or len(name) > MAX_LABEL:
        keep = MAX_LABEL - HASH_LEN - 1
        name = f"{name[:keep].rstrip('-')}-{_hash(user)}"
    return name


def label_value(user: str) -> str:
    """``user`` as a label value (for selectors and ``kubectl get pods -l``)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "_", user).strip("._-")
    if value != user or len(value) > MAX_LABEL:
        keep = MAX_LABEL - HASH_LEN - 1
        value = f"{value[:keep].rstrip('._-')}-{_hash(user)}".lstrip("-")
    return value
