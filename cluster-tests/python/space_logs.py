"""Prints a Space's run log through the real huggingface_hub client (fetch_space_logs, no follow)."""

import os

from huggingface_hub import HfApi

api = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=os.environ["HF_TOKEN"])
for line in api.fetch_space_logs(os.environ["SPACE"]):
    print(line, end="")
