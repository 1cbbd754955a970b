"""Is the Hugging Face hub reachable? One cheap probe, torch-free (the server's front end uses it too)."""

from __future__ import annotations


def hub_reachable(repo: str, filename: str, timeout: float = 3.0) -> bool:
    """True when the hub answers a HEAD for `filename` of `repo` within `timeout` seconds (any HTTP status:
    the network path works). One try, no retries: a server without network finds out at once."""
    import urllib.error
    import urllib.request

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = f"{constants.ENDPOINT}/{repo}/resolve/main/{filename}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
