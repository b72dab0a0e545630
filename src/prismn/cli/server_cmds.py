"""`prismn coordinator` and `prismn peer`: the two long-running services."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

import typer

from prismn.errors import PrismnError


def _home() -> Path:
    return Path(os.environ.get("PRISMN_HOME") or Path.home() / ".cache" / "prismn")


def parse_location(location: str | None, city: str | None) -> tuple[float, float, str | None, str | None]:
    """(lat, lon, zone, city name) from --location "lat,lon" or --city NAME; no IP geolocation."""
    from prismn import geo

    if location and city:
        raise PrismnError("give either --location or --city, not both")
    if city:
        row = geo.find_city(city)
        if row is None:
            raise PrismnError(f"unknown city {city!r}: use --location 'LAT,LON' or a listed city (e.g. Oslo, Paris)")
        return row["lat"], row["lon"], row.get("zone"), row["name"]
    if location:
        try:
            lat_s, lon_s = location.split(",")
            lat, lon = float(lat_s), float(lon_s)
        except ValueError:
            raise PrismnError(f"--location {location!r} must be 'LAT,LON', e.g. '59.91,10.75'") from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise PrismnError(f"--location {location!r} is off the globe: latitude -90..90, longitude -180..180")
        return lat, lon, None, None
    raise PrismnError("say where this machine stands: --city NAME or --location 'LAT,LON' (no IP lookup is made)")


def read_secret(env: str, file: str | None, what: str) -> str:
    """A secret from a file or the environment (never argv, where `ps` shows it); one line if missing."""
    if file:
        p = Path(file).expanduser()
        try:
            value = p.read_text().strip()
        except OSError as e:
            raise PrismnError(f"cannot read the {what} from {p}: {e.strerror}") from None
        if not value:
            raise PrismnError(f"{p} is empty: it should hold the {what}")
        return value
    value = os.environ.get(env, "").strip()
    if not value:
        raise PrismnError(f"no {what}: pass --token-file FILE or set {env}")
    return value


def _bench_lock(given: str | None) -> str | None:
    """Peers on one host never time their layers at the same time (each would measure the others' load)."""
    if given and given.lower() == "none":
        return None
    if given:
        return given
    _home().mkdir(parents=True, exist_ok=True)
    return str(_home() / "bench.lock")


def register(app: typer.Typer) -> None:
    @app.command("coordinator")
    def coordinator(
        host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
        port: int = typer.Option(8000, help="HTTP port."),
        db: str = typer.Option(None, "--db", help="SQLAlchemy URL (default: SQLite under $PRISMN_HOME); "
                                                  "postgresql://user@host/db for PostgreSQL."),
        secrets_dir: str = typer.Option(None, "--secrets-dir",
                                        help="Folder of admin.key, join.token and coordinator.key (0600 files; "
                                             "default: beside a SQLite store, else $PRISMN_HOME). Secrets are "
                                             "never read from the command line: PRISMN_ADMIN_KEY, "
                                             "PRISMN_JOIN_TOKEN and PRISMN_API_KEY register extra ones."),
        city: str = typer.Option(None, "--city", help="Where the coordinator stands (the pipeline's client)."),
        location: str = typer.Option(None, "--location", help="'LAT,LON' of the coordinator."),
        lease_s: float = typer.Option(15.0, "--lease-s", min=1.0, help="Lease length for peers."),
        heartbeat_s: float = typer.Option(5.0, "--heartbeat-s", min=0.2, help="Heartbeat period for peers."),
        rejoin_grace_s: float = typer.Option(
            10.0, "--rejoin-grace-s", min=0.0,
            help="After a restart, extra seconds (beyond one lease) for peers to come back before they count as "
                 "offline; cover the peers' back-off cap."),
        emulate_wan: bool = typer.Option(False, "--emulate-wan",
                                         help="Delay each link by RTT/2 estimated from the peers' locations."),
        max_tokens: int = typer.Option(1024, "--max-tokens-limit", min=1, help="Largest max_tokens accepted."),
        max_queue: int = typer.Option(64, "--max-queue", min=0,
                                      help="Requests per deployment that wait for a session; beyond: 429."),
        queue_timeout_s: float = typer.Option(60.0, "--queue-timeout-s", min=0.1,
                                              help="Longest wait in that queue before a 429."),
        request_timeout_s: float = typer.Option(600.0, "--request-timeout-s", min=1.0,
                                                help="A generation running longer is stopped (504)."),
        max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024,
                                           help="Largest request body accepted (413 beyond)."),
        relay_url: str = typer.Option(None, "--relay-url", help="Iroh peers: dial through this self-hosted relay."),
        no_relay: bool = typer.Option(False, "--no-relay", help="Iroh peers: no relay (LAN, tests)."),
        carbon: str = typer.Option(None, "--carbon", help="Grid intensity providers in order, e.g. "
                                   "'electricitymaps,embedded', 'nationalgrid,embedded', 'file,embedded' "
                                   "(default: embedded, with Electricity Maps first when a token is set)."),
        carbon_file: list[Path] = typer.Option([], "--carbon-file", help="The JSON file of the 'file' provider, "
                                               "or hourly exports for 'replay' (repeatable)."),
        replace: str = typer.Option(None, "--replace", help="Move carbon-driven deployments as the grid changes, "
                                    "e.g. 'every=5m,threshold=5%,dwell=3h,forecast=6h,weights=download' "
                                    "(see docs/carbon.md; default: never)."),
    ) -> None:
        """Run the coordinator: peer registry, deployments and the OpenAI-compatible API."""
        import uvicorn

        from prismn.coordinator.app import create_app
        from prismn.coordinator.settings import Settings
        from prismn.coordinator.store import safe_url

        lat, lon = (0.0, 0.0)
        if city or location:
            lat, lon, _, _ = parse_location(location, city)
        if db is None:
            _home().mkdir(parents=True, exist_ok=True)
            db = f"sqlite:///{_home() / 'coordinator.db'}"
        url = f"http://{host}:{port}"
        env = os.environ
        loopback = host in ("127.0.0.1", "localhost", "::1")
        settings = Settings(db_url=db, join_token=env.get("PRISMN_JOIN_TOKEN") or None,
                            api_key=env.get("PRISMN_API_KEY") or None, admin_key=env.get("PRISMN_ADMIN_KEY") or None,
                            secrets_dir=secrets_dir, require_api_key=not loopback, lat=lat, lon=lon, lease_s=lease_s,
                            heartbeat_s=heartbeat_s, rejoin_grace_s=rejoin_grace_s, emulate_wan=emulate_wan,
                            max_tokens_limit=max_tokens, public_url=url, max_queue=max_queue,
                            queue_timeout_s=queue_timeout_s, request_timeout_s=request_timeout_s,
                            max_body_bytes=max_body_bytes, iroh_relay=not no_relay,
                            iroh_relay_url=relay_url)
        if carbon or carbon_file:  # grid intensity over time (issue 13): providers and re-placement policy
            from prismn.carbon import make_provider

            settings.carbon = make_provider(carbon or "file,embedded", list(carbon_file))
        if replace and replace.strip().lower() not in ("off", "never", "none"):
            from prismn.coordinator.replacement import Policy

            settings.replacement = Policy.parse(replace)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)
        app = create_app(settings)
        files = app.state.prismn.secret_files
        print(f"Prismn coordinator on {url} (store: {safe_url(db)})", flush=True)
        print(f"admin key: in {files['admin'] or 'PRISMN_ADMIN_KEY (as given)'}", flush=True)
        print(f"join token: in {files['join'] or 'PRISMN_JOIN_TOKEN (as given)'}", flush=True)
        if not loopback:
            print("listening beyond loopback: the OpenAI API needs an API key "
                  f"(make one: prismn admin api-key create --coordinator {url})", flush=True)
        print(f"start a peer: prismn peer --coordinator {url} --token-file {files['join'] or 'FILE'} --city Oslo",
              flush=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")

    @app.command("peer")
    def peer(
        coordinator: str = typer.Option(..., "--coordinator", help="Coordinator URL."),
        token_file: str = typer.Option(None, "--token-file",
                                       help="File holding the swarm's join token (or set PRISMN_JOIN_TOKEN; "
                                            "never on the command line)."),
        key_file: str = typer.Option(None, "--key-file",
                                     help="This peer's Ed25519 key (made at first start, 0600; default: "
                                          "$PRISMN_HOME/peers/ID.key). Its id is bound to this key."),
        city: str = typer.Option(None, "--city", help="A known city this peer stands in."),
        location: str = typer.Option(None, "--location", help="'LAT,LON' of this peer."),
        zone: str = typer.Option(None, "--zone", help="Electricity Maps zone (default: from the location)."),
        vram: float = typer.Option(None, "--vram", min=0.0, help="Free VRAM (GiB) to offer (default: detected)."),
        gpu: str = typer.Option(None, "--gpu", help="GPU name (default: detected via NVML, else CPU)."),
        peer_id: str = typer.Option(None, "--id", help="Peer id (default: city or host name + port)."),
        listen: str = typer.Option("127.0.0.1:0", "--listen", help="HOST:PORT of the stage server."),
        advertise: str = typer.Option(None, "--advertise-host", help="Host other peers should dial."),
        pue: float = typer.Option(None, "--pue", min=1.0, help="Site PUE (default: 1.56)."),
        carbon_intensity: float = typer.Option(None, "--carbon-intensity", min=0.0,
                                               help="Override the grid intensity (g/kWh)."),
        bench_model: list[str] = typer.Option([], "--bench-model",
                                               help="Prepared model to time at start (repeatable)."),
        transport_kind: str = typer.Option("tcp", "--transport",
                                           help="tcp (LAN; --listen is the TCP port) or iroh (QUIC, dialled by "
                                                "this peer's key through NAT and firewalls; --listen is the UDP "
                                                "bind address). See docs/transport.md."),
        relay_url: str = typer.Option(None, "--relay-url", help="Iroh: a self-hosted relay instead of n0's."),
        no_relay: bool = typer.Option(False, "--no-relay", help="Iroh: no relay at all (LAN, tests)."),
        bench_lock: str = typer.Option(None, "--bench-lock",
                                       help="Lock file peers on one machine share so that their start-up "
                                            "benchmarks run one at a time (default: bench.lock under "
                                            "$PRISMN_HOME, ~/.cache/prismn); 'none' to time at once."),
    ) -> None:
        """Run a peer: serve stages for a coordinator, keep a lease, re-join on its own."""
        from prismn.gpus import lookup_gpu, match_gpu
        from prismn.identity import Identity
        from prismn.peer.agent import PeerAgent, PeerConfig, benchmark
        from prismn.peer.hardware import detect

        token = read_secret("PRISMN_JOIN_TOKEN", token_file, "join token")
        lat, lon, city_zone, city_name = parse_location(location, city)
        hw = detect()
        if gpu:
            gpu_name = lookup_gpu(gpu).name  # one clear line for an unknown GPU
        else:
            found = match_gpu(hw.gpu)
            if found is None:
                raise PrismnError(f"detected GPU {hw.gpu!r} is not in the catalog: pass --gpu with the closest "
                                  "name from `prismn gpus`")
            gpu_name = found.name
        lhost, _, lport_s = listen.rpartition(":")
        if not lhost or not lport_s.isdigit() or int(lport_s) > 65535:
            raise PrismnError(f"--listen {listen!r} must be HOST:PORT (port 0 picks a free one)")
        lport = int(lport_s)
        pid = peer_id or f"{(city_name or socket.gethostname()).lower().replace(' ', '-')}-{os.getpid()}"
        cfg = PeerConfig(coordinator=coordinator, token=token, peer_id=pid, lat=lat, lon=lon, gpu=gpu_name,
                         free_vram_gb=vram if vram is not None else hw.free_vram_gb, zone=zone or city_zone,
                         city=city_name, carbon_intensity=carbon_intensity, pue=pue, listen_host=lhost,
                         listen_port=lport, advertise_host=advertise, bench_models=list(bench_model),
                         bench_lock=_bench_lock(bench_lock))
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)

        identity = Identity.load_or_create(key_file or _home() / "peers" / f"{pid}.key")

        if transport_kind not in ("tcp", "iroh"):
            raise PrismnError(f"--transport {transport_kind!r}: use tcp or iroh")

        async def amain() -> None:
            from prismn.runtime.server import StageServer
            from prismn.transport import MixedTransport, make_transport

            agent: PeerAgent | None = None

            def make_iroh() -> Any:
                t = make_transport("iroh", identity=identity, relay=not no_relay, relay_url=relay_url)

                async def resolve(eid: str) -> dict[str, Any] | None:  # the coordinator is the address book
                    return await agent.resolve_endpoint(eid) if agent is not None else None

                t.resolver = resolve  # type: ignore[attr-defined]
                return t

            primary = make_iroh() if transport_kind == "iroh" else make_transport("tcp")
            # signed mode: the stage answers only what its coordinator signed (trust is set at join)
            server = StageServer(None, peer_id=pid, allow_load=True, bench=True, identity=identity, trust="",
                                 transport=MixedTransport(primary, make_iroh))
            await server.start(lhost, lport)
            if transport_kind == "iroh" and not no_relay and not await primary.wait_online():  # type: ignore[attr-defined]
                logging.getLogger("prismn.peer").warning("no Iroh relay reached yet: publishing direct addresses only")
            agent = PeerAgent(cfg, server, identity)
            for m in cfg.bench_models:
                agent.measurements.append(await asyncio.to_thread(benchmark, m, cfg.bench_lock))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, agent.stopping.set)
            print(f"peer {pid} serving stages on {agent.data_addr} ({gpu_name}, {cfg.free_vram_gb:.2f} GiB); "
                  f"joining {coordinator}", flush=True)
            try:
                await agent.run()
            finally:
                await agent.aclose()
                await server.stop()
                await server.transport.close()

        asyncio.run(amain())
