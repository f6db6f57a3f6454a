"""Who may do what on the bus: one NATS user per service, its rights derived from the catalog.

``render_authorization(passwords)`` writes the ``authorization { users = [...] }`` block of a
NATS server configuration. Local mode, the secured test server and the cluster's committed
``infra/k8s/base/nats/auth.conf`` (``ticketing-nats-auth``, or ``make nats-auth``, writes it;
a test fails when it is stale) all come from it, so the rights are the same everywhere.

A service's user (named after the service) may publish, and nothing else:

- its own event subjects from :data:`CATALOG`; a service whose events JetStream fires from
  message schedules (expiration) publishes only its schedules, ``schedule.<service>.*``;
- ``$JS.API.STREAM.CREATE.EVENTS`` and ``$JS.API.STREAM.UPDATE.EVENTS``: every service ensures
  the stream at start-up, and again when the NATS store was lost (``ensure_stream``);
- for a service that consumes: its durable's create (``$JS.API.CONSUMER.DURABLE.CREATE.EVENTS.
  <durable>``, the subject the client uses, and ``$JS.API.CONSUMER.CREATE.EVENTS.<durable>``,
  the newer one for the same call), its pulls (``$JS.API.CONSUMER.MSG.NEXT.EVENTS.<durable>``)
  and its acks, naks and in-progress marks (``$JS.ACK.EVENTS.<durable>.>``);

and may subscribe only to its own reply inbox ``_INBOX_<user>.>`` (the client is given that
prefix, see :func:`inbox_prefix`): publish acks, API replies and pulled messages come back
there, and no user can read another one's replies. Nothing else is allowed: another service's
events, another durable, deleting anything, a core NATS subscription to an event subject.

Two limits of nats-server 2.15 to know about. The filter of a consumer is not in its create
subject when there are several (the server refuses the subject-based create for them, error
10137), so the rights pin the durable's name, not its filter: a service's user could widen its
own durable's filter and read more events than it handles. And the target of a message schedule
is not checked against the publisher's rights: expiration's user could schedule any event.
Both are a matter of trusting the service's code, not of anyone who merely reaches NATS.

The ``monitor`` user (local mode only) reads the stream and publishes no event: stream info,
ephemeral and ordered consumers of its own (create, info, pull, flow control, delete), its
replies on ``_INBOX.>`` (the default prefix, for any tool); never a service's durable.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ticketing_common.events.catalog import CATALOG
from ticketing_common.messaging.streams import SCHEDULE_SUBJECT_PREFIX, STREAM_NAME

# The cluster's copy: its passwords are variables the NATS pods get from the Secret nats-users.
CLUSTER_AUTH_CONF = Path(__file__).resolve().parents[4] / "infra/k8s/base/nats/auth.conf"
MONITOR_USER = "monitor"
SERVICE_USERS = tuple(CATALOG)
USERS = (*SERVICE_USERS, MONITOR_USER)

# A literal password, or a ``$VARIABLE`` the server reads from its environment.
_PASSWORD = re.compile(r"[A-Za-z0-9_\-+/=.]{16,}")
_VARIABLE = re.compile(r"\$[A-Z][A-Z0-9_]*")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()


def inbox_prefix(user: str) -> str:
    """The reply-subject prefix of ``user``'s connections (``_INBOX_orders``)."""
    return f"_INBOX_{user}"


def durable_name(service: str) -> str:
    """A service's one durable consumer is named after it."""
    return service


def password_variable(user: str) -> str:
    """The environment variable holding ``user``'s password in the cluster."""
    return f"$NATS_PASSWORD_{user.upper()}"


def _api(action: str, *rest: str) -> str:
    """A JetStream API subject on the stream: ``_api("CONSUMER.INFO", "*")``."""
    return ".".join(["$JS.API", action, STREAM_NAME, *rest])


def _durable_subjects(durable: str) -> tuple[str, ...]:
    return (
        _api("CONSUMER.DURABLE.CREATE", durable),
        _api("CONSUMER.CREATE", durable),
        _api("CONSUMER.MSG.NEXT", durable),
    )


def service_permissions(service: str) -> Permissions:
    events = CATALOG[service]
    if events.scheduled:
        own_events: tuple[str, ...] = (f"{SCHEDULE_SUBJECT_PREFIX}.{service}.*",)
    else:
        own_events = tuple(subject.value for subject in events.publishes)
    stream = (_api("STREAM.CREATE"), _api("STREAM.UPDATE"))
    consuming: tuple[str, ...] = ()
    if events.consumes:
        durable = durable_name(service)
        consuming = (*_durable_subjects(durable), f"$JS.ACK.{STREAM_NAME}.{durable}.>")
    return Permissions(
        publish=(*own_events, *stream, *consuming),
        subscribe=(f"{inbox_prefix(service)}.>",),
    )


def monitor_permissions() -> Permissions:
    return Permissions(
        publish=(
            "$JS.API.INFO",
            "$JS.API.STREAM.NAMES",
            _api("STREAM.INFO"),
            _api("CONSUMER.CREATE"),
            _api("CONSUMER.CREATE", ">"),
            _api("CONSUMER.INFO", "*"),
            _api("CONSUMER.MSG.NEXT", "*"),
            _api("CONSUMER.DELETE", "*"),
            f"$JS.FC.{STREAM_NAME}.>",
        ),
        subscribe=("_INBOX.>",),
        # Never a service's durable: taking its messages or changing it would starve it.
        publish_deny=tuple(
            subject
            for service in SERVICE_USERS
            if CATALOG[service].consumes
            for durable in [durable_name(service)]
            for subject in (
                *_durable_subjects(durable),
                _api("CONSUMER.CREATE", durable, ">"),
                _api("CONSUMER.DELETE", durable),
            )
        ),
    )


def permissions_of(user: str) -> Permissions:
    return monitor_permissions() if user == MONITOR_USER else service_permissions(user)


def _password(value: str) -> str:
    if _VARIABLE.fullmatch(value):
        return value
    if not _PASSWORD.fullmatch(value):
        raise ValueError("a NATS password is 16+ characters of [A-Za-z0-9_-+/=.] or a $VARIABLE")
    return json.dumps(value)


def _list(subjects: tuple[str, ...], indent: str) -> str:
    items = "".join(f"{indent}  {json.dumps(subject)}\n" for subject in subjects)
    return f"[\n{items}{indent}]"


def render_authorization(passwords: Mapping[str, str]) -> str:
    """The ``authorization`` block for the users in ``passwords`` (a password or ``$VAR``)."""
    unknown = set(passwords) - set(USERS)
    if unknown:
        raise ValueError(f"no such NATS user: {', '.join(sorted(unknown))}")
    pad = " " * 10
    lines = [
        "# Generated from the event catalog by ticketing_common.messaging.permissions;",
        "# do not edit (the cluster's copy: `make nats-auth` rewrites it).",
        "authorization {",
        "  users = [",
    ]
    for user in USERS:
        if user not in passwords:
            continue
        rights = permissions_of(user)
        lines += [
            "    {",
            f"      user: {json.dumps(user)}",
            f"      password: {_password(passwords[user])}",
            "      permissions: {",
            "        publish: {",
            f"          allow: {_list(rights.publish, pad)}",
        ]
        if rights.publish_deny:
            lines.append(f"          deny: {_list(rights.publish_deny, pad)}")
        lines += [
            "        }",
            "        subscribe: {",
            f"          allow: {_list(rights.subscribe, pad)}",
            "        }",
            "      }",
            "    }",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def cluster_authorization() -> str:
    """The cluster's block: every service user, passwords from ``$NATS_PASSWORD_<USER>``."""
    return render_authorization({user: password_variable(user) for user in SERVICE_USERS})


def main(argv: list[str] | None = None) -> int:
    """``ticketing-nats-auth [--check]``: write (or check) the cluster's ``auth.conf``."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    parser.add_argument("--out", type=Path, default=CLUSTER_AUTH_CONF)
    args = parser.parse_args(argv)
    expected = cluster_authorization()
    if args.check:
        if not args.out.exists() or args.out.read_text() != expected:
            print(f"{args.out} is stale: run ticketing-nats-auth (make nats-auth)")
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(expected)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
