"""`helm upgrade --install` through Helm's library (helm-sdkpy), for machines without the helm binary.

    python scripts/helm.py RELEASE CHART --namespace NS [--values FILE]... [--set-json KEY=JSON]...

Installs RELEASE or upgrades it, creating the namespace, and waits for its workloads to be ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import helm_sdkpy as helm
import yaml


def merge(into: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("release")
    parser.add_argument("chart")
    parser.add_argument("-n", "--namespace", required=True)
    parser.add_argument("-f", "--values", action="append", default=[], help="a values file (repeatable)")
    parser.add_argument("--set-json", action="append", default=[], help="KEY=JSON, KEY dotted (repeatable)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds")
    args = parser.parse_args()

    values: dict[str, Any] = {}
    for path in args.values:
        merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for item in args.set_json:
        key, _, raw = item.partition("=")
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(raw)

    config = helm.Configuration(namespace=args.namespace)
    asyncio.run(
        helm.Upgrade(config).run(
            args.release, args.chart, values=values, install=True, create_namespace=True, wait=True,
            timeout=args.timeout,
        )
    )  # fmt: skip
    print(f"Release {args.release} is deployed in {args.namespace}")


if __name__ == "__main__":
    main()
