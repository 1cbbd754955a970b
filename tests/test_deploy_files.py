"""The deployment files that cannot run here (no Docker daemon, no Kubernetes) checked against each other,
the README and a real `haproxy -c`: install steps, drain deadlines, maxconn, probes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
needs_haproxy = pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed")


def _flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _haproxy_check(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env})


@needs_haproxy
def test_haproxy_cfg_is_valid_plain_and_with_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    assert _haproxy_check(HAPROXY_CFG, BARK_REPLICA1="127.0.0.1:1", BARK_REPLICA2="127.0.0.1:2").returncode == 0
    pem = tmp_path / "bark.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(pem)
    result = _haproxy_check(HAPROXY_CFG, BARK_TLS=f"ssl crt {pem}", BARK_BIND="127.0.0.1:8443")
    assert result.returncode == 0, result.stderr
    bad = _haproxy_check(HAPROXY_CFG, BARK_TLS=f"ssl crt {tmp_path / 'missing.pem'}")
    assert bad.returncode != 0  # the check is real: a missing certificate is refused


def test_haproxy_cfg_has_the_scale_out_settings() -> None:
    text = HAPROXY_CFG.read_text()
    for line in ("balance leastconn", "option httpchk", "http-check send meth GET uri /healthz ver HTTP/1.1", "timeout tunnel 1h", "option redispatch 1",
                 "retries 3", "retry-on conn-failure empty-response 503", "option forwardfor"):
        assert line in text, line
    assert re.search(r'default-server .*maxconn "\$\{BARK_MAXCONN-8\}"', text)


@needs_haproxy
def test_kubernetes_example_is_consistent(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "bark.yaml").read_text()))
    kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    pod = kinds[("Deployment", "bark")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    drain = float(_flag(args, "--drain-timeout"))
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > drain + pre_stop
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert "httpGet" not in container["livenessProbe"]  # a full or draining replica is alive
    assert "--refuse-when-full" in args
    headless = kinds[("Service", "bark-replicas")]["spec"]
    assert headless["clusterIP"] == "None"
    cfg = kinds[("ConfigMap", "bark-haproxy")]["data"]["haproxy.cfg"]
    assert re.search(rf"maxconn {_flag(args, '--max-streams')} ", cfg)
    (tmp_path / "haproxy.cfg").write_text(cfg)
    result = _haproxy_check(tmp_path / "haproxy.cfg")
    assert result.returncode == 0, result.stderr


def test_compose_file_is_consistent() -> None:
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    replicas = [name for name in services if name.startswith("bark")]
    assert len(replicas) == 2
    proxy = services["haproxy"]
    for i, name in enumerate(replicas, 1):
        args = services[name]["command"]
        assert proxy["environment"]["BARK_MAXCONN"] == _flag(args, "--max-streams")
        assert proxy["environment"][f"BARK_REPLICA{i}"] == f"{name}:8765"
        assert float(services[name]["stop_grace_period"].rstrip("s")) > float(_flag(args, "--drain-timeout"))
        assert (DEPLOY / "docker" / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]).is_file()
    assert any(v.endswith("haproxy.cfg:ro") and (DEPLOY / "docker" / v.split(":")[0]).resolve() == HAPROXY_CFG
               for v in proxy["volumes"])


def test_dockerfiles_run_the_readme_install_steps() -> None:
    """The torch pin and the project install in both Dockerfiles are the README's command 1 (and .ci/run's)."""
    readme = (ROOT / "README.md").read_text()
    first = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    pin = re.search(r"pip install (torch==[\d.]+)", first)[1]  # type: ignore[index]
    assert f"pip install -q {pin}" in (ROOT / ".ci" / "run").read_text()
    assert f"pip install {pin} --index-url https://download.pytorch.org/whl/cpu" in readme
    cpu = (DEPLOY / "docker" / "Dockerfile.cpu").read_text()
    cuda = (DEPLOY / "docker" / "Dockerfile.cuda").read_text()
    assert f"pip install --no-cache-dir {pin} --index-url https://download.pytorch.org/whl/cpu" in cpu
    assert re.search(rf"pip install --no-cache-dir {re.escape(pin)}\n", cuda)
    for text in (cpu, cuda):
        assert "python3 -m venv" in text and "pip install --no-cache-dir -e '.[client]'" in text
        assert "STOPSIGNAL SIGTERM" in text
        for package in ("protocol", "streaming", "server", "client"):  # what pyproject packages
            assert f"COPY {package} ./{package}" in text
