"""``amagi serve``: the DICOM listener with automatic analysis and delivery (the main job)."""

from __future__ import annotations

import argparse

from amagi_plugin.cli import config_flag


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", parents=parents, help="run the DICOM listener and analyse what it receives",
        description="Receive surgical videos by C-STORE, analyse each one when its association "
        "ends, record the case and send SR, SEG, key images and KOS to the configured "
        "destinations (retrying until they confirm); with --poll, also the new videos of "
        "DICOMweb servers that cannot push. Stops on SIGINT/SIGTERM. With --role "
        "listener or worker, several processes on several hosts share the work through one "
        "PostgreSQL database and one storage directory.")
    config_flag(p, "--role", key="service.role", choices=("all", "listener", "worker"))
    net = p.add_argument_group("network (as pynetdicom's storescp)")
    config_flag(net, "-aet", "--ae-title", key="listener.ae_title", metavar="AETITLE")
    config_flag(net, "-p", "--port", key="listener.port", metavar="PORT")
    config_flag(net, "-ba", "--bind-address", key="listener.bind_address", metavar="ADDRESS")
    config_flag(net, "--max-pdu", key="listener.max_pdu", metavar="BYTES")
    config_flag(net, "-ta", "--acse-timeout", key="listener.acse_timeout", metavar="S")
    config_flag(net, "-td", "--dimse-timeout", key="listener.dimse_timeout", metavar="S")
    config_flag(net, "-tn", "--network-timeout", key="listener.network_timeout", metavar="S")
    p.add_argument("--destination", dest="destinations", action="append", default=[],
                   metavar="AE_TITLE@HOST:PORT|URL",
                   help="send results there by C-STORE, or by STOW-RS to an http(s)://.../dicom-web "
                   "base URL (repeatable; adds to delivery.destinations)")
    config_flag(p, "--poll", key="poll.sources", metavar="URL,...")
    config_flag(p, "--workers", key="worker.count", metavar="N")
    config_flag(p, "--devices", key="worker.devices", metavar="DEVICE,...")
    config_flag(p, "--fast", key="model.fast", action="store_const", const="true")
    config_flag(p, "--backend", key="model.backend", metavar="torch|openvino")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, ctx) -> int:
    import dataclasses

    from amagi_plugin.config import ConfigError, Destination
    from amagi_plugin.fastpath import check_devices_available
    from amagi_plugin.modelspec import resolve_model
    from amagi_plugin.runtime import analyzer_from_config
    from amagi_plugin.service.app import Service, check_role_database

    cfg = ctx.config
    check_role_database(cfg)  # before loading any model
    if args.destinations:
        try:
            extra = [Destination.parse(d) for d in args.destinations]
        except ValueError as e:
            raise ConfigError(f"invalid --destination: {e}") from None
        cfg = dataclasses.replace(cfg, delivery=dataclasses.replace(
            cfg.delivery, destinations=[*cfg.delivery.destinations, *extra]))
    if cfg.service.role == "listener":  # queues jobs for the configured model, never loads it
        Service(cfg, [], resolve_model(cfg.model), environ=ctx.environ).serve_forever()
        return 0
    # One model per configured device (worker.count workers on each); none: model.device.
    check_devices_available(cfg.worker.devices)
    built = [analyzer_from_config(cfg, device) for device in cfg.worker.devices or [None]]
    Service(cfg, [analyzer for analyzer, _ in built], built[0][1],
            environ=ctx.environ).serve_forever()
    return 0
