"""The proxy kinds' settings (`[proxy]`), one model per kind, chosen by `kind`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from bluegreen.values import Listen, Model as _Model, key as _key, parse_listen, rendered_word

class TLSSettings(_Model):
    """`[proxy.tls]`: HTTPS on the proxy, with certificates the host already has (e.g. from
    certbot); bluegreen never reads or copies the key."""

    certificate: str = _key(..., "TLS: path on the host of the certificate chain (PEM; "
                            "placeholders allowed). HAProxy: the certificate and key in one "
                            "PEM, or the key beside it as `<certificate>.key`")
    certificate_key: str | None = _key(None, "TLS: path on the host of the private key "
                                       "(default: inside `certificate`). HAProxy: only "
                                       "`<certificate>.key` or the certificate itself")
    listen: Listen = _key("443", "TLS: the HTTPS listener, like `proxy.listen`; verify and "
                       "status ask it with SNI = the first `server_name`")
    redirect_http: bool = _key(True, "TLS: the plain `proxy.listen` answers 301 to https "
                               "(except `/deployment_id` and, with `acme_root`, "
                               "`/.well-known/acme-challenge/`)")
    acme_root: str | None = _key(None, "TLS, nginx only: a directory on the host served for "
                                 "`/.well-known/acme-challenge/` on plain HTTP (certbot "
                                 "--webroot -w ACME_ROOT)")
    hsts: bool = _key(False, "TLS: add `Strict-Transport-Security: max-age=31536000` to "
                      "HTTPS answers (browsers then refuse plain HTTP for a year)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(rendered_word(v))
        return v

    @field_validator("certificate", "certificate_key", "acme_root")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.startswith("/") or re.search(r"[\s;'\"{}]",
                                                                      re.sub(r"\{\w+\}", "", v))):
            raise ValueError("must be an absolute path without spaces, quotes or ';'")
        return v


class _ProxyCommon(_Model):
    server_name: str = _key("localhost", "the site's names; the first is the `Host` used to ask "
                            "the proxy `/deployment_id`")
    listen: Listen = _key("80", "nginx: a `listen` value; haproxy: `[address:]port`. The proxy is "
                       "asked on its address (127.0.0.1 if none) and port")
    test: str = ""
    reload: str = ""
    sudo: bool = _key(False, "prefix proxy commands and file writes with `sudo -n`")
    template: str | None = _key(None, "your own Jinja2 template for the proxy's file "
                                "(`bluegreen docs configuration` lists its variables)")
    maintenance_page: str | None = _key(None, "nginx: a local HTML file that `bluegreen "
                                        "maintenance on` uploads and serves (503) instead "
                                        "of the page it renders from --message")
    tls: TLSSettings | None = _key(None, "`[proxy.tls]`: serve HTTPS (see its keys and "
                                   "`bluegreen docs https`)")

    @field_validator("test", "reload", mode="before")
    @classmethod
    def _kind_default(cls, v: Any, info: Any) -> Any:
        """An empty `test`/`reload` takes the kind's default."""
        return v or cls.model_fields[info.field_name].default

    @field_validator("test", "reload")
    @classmethod
    def _one_line(cls, v: str) -> str:
        """A line of root's install script (`test`), run as its words under sudo."""
        return rendered_word(v, forbidden="")

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, v: str) -> str:
        rendered_word(v)
        if not re.fullmatch(r"^[A-Za-z0-9_.*{}~^\\$-]+( [A-Za-z0-9_.*{}~^\\$-]+)*$", v):
            raise ValueError("must be nginx server names separated by single spaces")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(rendered_word(v))
        return v


class NginxSettings(_ProxyCommon):
    """`proxy.kind = "nginx"`: a site file per colour and a live link; switch = link + reload."""

    kind: Literal["nginx"] = _key("nginx", "`nginx` (site file per colour, switch = link + "
                                  "reload) or `haproxy` (switch through the runtime API, no "
                                  "reload)")
    sites_available: str = _key("/etc/nginx/sites-available", "nginx: where the two site "
                                "files go")
    sites_enabled: str = _key("/etc/nginx/sites-enabled", "nginx: where the live link goes")
    site: str = _key("{app}", "nginx: file names `{site}-blue`, `{site}-green`; link "
                     "`sites_enabled/{site}`")
    test: str = _key("nginx -t", "shell command on the host that tests the proxy's config "
                     "(haproxy: run by `setup`, or when the config file had to change)")
    reload: str = _key("nginx -s reload", "shell command on the host that reloads the proxy "
                       "(e.g. `systemctl reload nginx`)")

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        if "/" in v or v.startswith(".") or not v:
            raise ValueError("must be a plain file name (no '/', not starting with '.')")
        return v


SHARED_MAP = "/etc/haproxy/conf.d/bluegreen-sites.map"


class HAProxySettings(_ProxyCommon):
    """`proxy.kind = "haproxy"`: one config file, a map file holding the live colour, and
    the runtime API the switch goes through (no reload)."""

    kind: Literal["haproxy"]
    config_file: str = _key("/etc/haproxy/conf.d/{app}.cfg", "haproxy: the file bluegreen "
                            "writes (a frontend, a backend per colour); HAProxy must load it")
    shared_frontend: bool = _key(False, "haproxy: several apps share one frontend on "
                                 "`listen` (and `tls.listen`), routed by `server_name`: "
                                 "`frontend_file` holds it and `map_file` (default "
                                 "`" + SHARED_MAP + "`) maps each app's names to its live "
                                 "backend (`bluegreen docs topologies`)")
    frontend_file: str = _key("/etc/haproxy/conf.d/bluegreen-frontend.cfg", "haproxy, with "
                              "`shared_frontend`: the frontend every app writes alike")
    map_file: str = _key("/etc/haproxy/conf.d/{app}.map", "haproxy: holds `live blue` or "
                         "`live green`, the persistent live colour, read when HAProxy starts")
    socket: str = _key("/run/haproxy/admin.sock", "haproxy: the runtime API (`stats socket ... "
                       "level admin`), a path on the host or `address:port`")
    test: str = _key("haproxy -c -q -f /etc/haproxy/haproxy.cfg -f /etc/haproxy/conf.d",
                     "shell command on the host that tests the proxy's config")
    reload: str = _key("systemctl reload haproxy", "shell command on the host that reloads "
                       "the proxy")

    @model_validator(mode="before")
    @classmethod
    def _shared_map(cls, data: Any) -> Any:
        """With a shared frontend, the apps' names share one map file by default."""
        if isinstance(data, dict) and data.get("shared_frontend") and "map_file" not in data:
            return {**data, "map_file": SHARED_MAP}
        return data

    @model_validator(mode="after")
    def _paths(self) -> HAProxySettings:
        if len(self.listen.split()) != 1:
            raise ValueError(f"listen: {self.listen!r}: with kind = \"haproxy\" use "
                             "[address:]port only")
        if self.maintenance_page is not None:
            raise ValueError("maintenance_page: the haproxy kind renders its own page from "
                             "`maintenance on --message`")
        tls = self.tls
        if tls is not None:
            if len(tls.listen.split()) != 1:
                raise ValueError(f"tls.listen: {tls.listen!r}: with kind = \"haproxy\" use "
                                 "[address:]port only")
            if tls.certificate_key not in (None, tls.certificate, tls.certificate + ".key"):
                raise ValueError("tls.certificate_key: HAProxy loads the key from the "
                                 "certificate's PEM or from `<certificate>.key` beside it; "
                                 f"put it at {tls.certificate}.key and leave this key out")
            if tls.acme_root is not None:
                raise ValueError("tls.acme_root: HAProxy serves no files; renew with "
                                 "`certbot --standalone --http-01-port N` behind a "
                                 "backend, or a DNS challenge (`bluegreen docs https`)")
        if self.shared_frontend and any(c in self.server_name for c in "*~^$\\{}"):
            raise ValueError("server_name: with shared_frontend, plain host names only (they "
                             "are keys of the map file)")
        for key in ("config_file", "map_file", "frontend_file"):
            if not getattr(self, key).startswith("/") or re.search(r"\s", getattr(self, key)):
                raise ValueError(f"{key}: must be an absolute path without spaces")
        if not (self.socket.startswith("/") or re.match(r"^[\w.-]+:\d{1,5}$", self.socket)):
            raise ValueError("socket: must be a unix socket path or address:port")
        return self


# The proxy kinds by name (bluegreen.proxies.KINDS implements each; a test keeps them equal).
PROXY_SETTINGS: dict[str, type[_ProxyCommon]] = {"nginx": NginxSettings,
                                                 "haproxy": HAProxySettings}
P = TypeVar("P", bound=_ProxyCommon)
ProxySettings = Annotated[NginxSettings | HAProxySettings, Field(discriminator="kind")]
