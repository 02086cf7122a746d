"""Registering the demo's model, regions and deployments through the admin API."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import httpx

from demo.geography import RegionSite

__all__ = ["Admin"]


def text_signature(dim: int) -> dict[str, list[dict[str, object]]]:
    return {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, dim]}],
    }


class Admin:
    def __init__(self, base_url: str, token: str, verify: ssl.SSLContext | bool = True) -> None:
        """``verify``: how the admin API's certificate is checked (the fleet CA over HTTPS)."""
        self._http = httpx.Client(
            base_url=base_url + "/v1",
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(120.0, connect=5.0),
            verify=verify,
        )

    def _ok(self, r: httpx.Response) -> dict[str, object]:
        if r.status_code >= 400:
            raise RuntimeError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
        return r.json() if r.content else {}

    def upload(self, path: str, artifact: Path) -> None:
        digest = hashlib.sha256(artifact.read_bytes()).hexdigest()
        with artifact.open("rb") as f:
            self._ok(
                self._http.put(
                    path,
                    content=f,
                    headers={
                        "content-type": "application/octet-stream",
                        "x-artifact-sha256": digest,
                    },
                )
            )

    def register_model(
        self,
        name: str,
        version: str,
        artifact: Path,
        *,
        dim: int = 384,
        int8: Path | None = None,
        int8_error: float | None = None,
    ) -> None:
        """A text-embedding model version, its artifact and (optionally) its int8 variant."""
        self._ok(self._http.post("/models", json={"name": name, "description": "embeddings"}))
        base = f"/models/{name}/versions"
        body = {"version": version, "format": "onnx", **text_signature(dim)}
        self._ok(self._http.post(base, json=body))
        self.upload(f"{base}/{version}/artifact", artifact)
        if int8 is not None:
            variant = {
                "name": "int8",
                "description": "dynamic int8 (CPU)",
                "max_abs_error": int8_error,
            }
            self._ok(self._http.post(f"{base}/{version}/variants", json=variant))
            self.upload(f"{base}/{version}/variants/int8/artifact", int8)

    def register_generative(self, name: str, version: str, archive: Path) -> None:
        """A generative model version: its artifact is a tar archive of its folder."""
        self._ok(self._http.post("/models", json={"name": name, "description": "chat"}))
        base = f"/models/{name}/versions"
        body = {
            "version": version,
            "format": "generative",
            "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
        }
        self._ok(self._http.post(base, json=body))
        self.upload(f"{base}/{version}/artifact", archive)

    def add_region(self, site: RegionSite) -> str:
        """Register ``site``; return its agent credential (shown once)."""
        body = {
            "name": site.name,
            "provider": "demo",
            "lat": site.lat,
            "lon": site.lon,
            "gpu_type": site.gpu_type,
            "gpu_count": site.gpus,
        }
        created = self._ok(self._http.post("/regions", json=body))
        return str(created["agent_credential"])

    def deploy(self, model: str, version: str, region: str, variant: str | None) -> None:
        body = {"model": model, "version": version, "region": region, "variant": variant}
        self._ok(self._http.post("/deployments", json=body))

    def token(self, name: str, scopes: list[str]) -> str:
        return str(
            self._ok(self._http.post("/tokens", json={"name": name, "scopes": scopes}))["token"]
        )

    def api_key(self, name: str, rate_per_s: float, burst: float) -> str:
        """An end user's key for the router (shown once)."""
        body = {"name": name, "rate_per_s": rate_per_s, "burst": burst}
        return str(self._ok(self._http.post("/api-keys", json=body))["key"])

    def revoke_api_key(self, name: str) -> None:
        self._ok(self._http.delete(f"/api-keys/{name}"))

    def close(self) -> None:
        self._http.close()
