"""`vlmpref ui`: a local web app to compare base and tuned model, browse evaluations, and train.

    vlmpref ui --run runs/demo                     # http://127.0.0.1:7860
    vlmpref ui --run runs --port 8080
    VLMPREF_UI_PASSWORD=... vlmpref ui --run runs --host 0.0.0.0 --allow-remote   # other machines, with a login

Three tabs: Compare (an image, a question, base and tuned answers side by side, streaming, hallucinated
objects marked), Evaluation (a before/after evaluation: table, plots, examples to filter), and Train (estimate,
start, watch, stop and resume `vlmpref train`). Built on Gradio (`pip install 'vlmpref[ui]'`), which is
imported only when the app starts.

Safe by default: it listens on 127.0.0.1 only; another address needs --allow-remote and a password; no
public share link is ever made; it opens and writes only inside the --run folders; uploaded images are
decoded with the same limits as datasets; no telemetry, no request leaves the machine.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vlmpref.data.images import DEFAULT_MAX_PIXELS
from vlmpref.errors import VlmprefError

PASSWORD_ENV = "VLMPREF_UI_PASSWORD"


@dataclass
class UIConfig:
    """Options of `vlmpref ui`."""

    run: list[str] = field(default_factory=lambda: ["runs"], metadata={
        "help": "Folders the UI may open and write: training runs, evaluation folders, datasets, models and configs "
                "inside them are listed in its pickers, and no path outside them is opened."})
    host: str = field(default="127.0.0.1", metadata={
        "help": "Address to listen on; anything but this machine (127.0.0.1, localhost, ::1) needs --allow-remote "
                "and a password."})
    port: int = field(default=7860, metadata={"help": "Port to listen on."})
    allow_remote: bool = field(default=False, metadata={
        "help": "Allow --host to be an address other machines can reach (a login is then required)."})
    user: str = field(default="vlmpref", metadata={"help": "User name of the login, when a password is set."})
    password_file: Optional[str] = field(default=None, metadata={
        "help": f"File whose first line is the login password (or set {PASSWORD_ENV}); required with "
                "--allow-remote, optional otherwise."})
    ssl_certfile: Optional[str] = field(default=None, metadata={"help": "TLS certificate, to serve https."})
    ssl_keyfile: Optional[str] = field(default=None, metadata={"help": "TLS private key, with --ssl-certfile."})
    max_image_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={
        "help": "Refuse uploaded and dataset images with more pixels (decompression bombs), as datasets do."})
    max_upload_mb: int = field(default=20, metadata={"help": "Largest file an upload may be, in MB."})
    open_browser: bool = field(default=False, metadata={"help": "Open the app in this machine's web browser."})
    config: Optional[str] = field(default=None, metadata={"help": "YAML file with these options; flags override it."})

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise VlmprefError(f"--port must be between 1 and 65535, not {self.port}.")
        if self.max_image_pixels <= 0 or self.max_upload_mb <= 0:
            raise VlmprefError("--max-image-pixels and --max-upload-mb must be positive.")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise VlmprefError("--ssl-certfile and --ssl-keyfile go together; give both or neither.")


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def read_password(cfg: UIConfig) -> str | None:
    if cfg.password_file:
        path = Path(cfg.password_file).expanduser()
        if not path.is_file():
            raise VlmprefError(f"--password-file {cfg.password_file} does not exist.")
        lines = path.read_text().splitlines()
        password = lines[0].strip() if lines else ""
        if not password:
            raise VlmprefError(f"--password-file {cfg.password_file} is empty; put the password on its first line.")
        return password
    return os.environ.get(PASSWORD_ENV) or None


def login(cfg: UIConfig) -> tuple[str, str] | None:
    """The (user, password) the app asks for, or None; refuses a reachable address without both flags."""
    password = read_password(cfg)
    if not is_loopback(cfg.host):
        if not cfg.allow_remote:
            raise VlmprefError(f"--host {cfg.host} lets other machines reach the UI; pass --allow-remote as well (and "
                               f"a password with --password-file or {PASSWORD_ENV}), or keep --host 127.0.0.1.")
        if not password:
            raise VlmprefError(f"--host {cfg.host} with --allow-remote needs a password; give --password-file FILE or "
                               f"set {PASSWORD_ENV}.")
        if len(password) < 8:
            raise VlmprefError("The UI password is shorter than 8 characters; choose a longer one.")
    return (cfg.user, password) if password else None


def offline_environment() -> None:
    """Settings that keep Gradio (and huggingface_hub under it) from reaching the network or sharing the app.

    GRADIO_ANALYTICS_ENABLED=False stops Gradio's usage analytics and its version check at start,
    HF_HUB_DISABLE_TELEMETRY=1 huggingface_hub's; the variables removed would otherwise open a public share
    link, serve more folders, start an MCP server, or move the app to another address.
    """
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    for name in ("GRADIO_SHARE", "GRADIO_ALLOWED_PATHS", "GRADIO_MCP_SERVER", "GRADIO_SSR_MODE", "GRADIO_SERVER_NAME",
                 "GRADIO_ROOT_PATH"):
        os.environ.pop(name, None)


def run_ui(cfg: UIConfig, block: bool = True):
    """Start the app (blocking until Ctrl-C unless `block=False`); returns the running app."""
    login(cfg)  # a refused address or login stops here, before Gradio and the models are loaded
    try:
        from vlmpref.ui.app import launch
    except ImportError as exc:
        if "gradio" not in str(exc):
            raise
        raise VlmprefError("The web UI needs Gradio; install it with `pip install 'vlmpref[ui]'`.") from None
    return launch(cfg, block=block)
