"""The client verbs of ``workerpool`` as a user meets them: claim, cancel, release, renew,
open, status, watch, completion. Each flag says what it takes; each command's help ends with
examples and its exit codes. The verbs themselves live beside this module:
``client_claim`` (claim, cancel), ``client_leases`` (release, renew, open),
``client_status`` (status, status --aws), ``client_watch`` (watch); what is checked before
anything is sent is ``client_args``.
"""

from __future__ import annotations

import argparse
from typing import Any

from shared import client_args as check
from shared.client_common import exit_codes, guarded

USER_HELP = "who you are (default: $WORKERPOOL_USER, else your login name)"
WAIT_REPLY_HELP = "how long to wait for the answer (default: %(default)ss)"
DURATIONS = "Durations: 90 or 90s, 15m, 2h, 1d, 1h30m."


def _parser(sub: Any, name: str, summary: str, description: str, epilog: str
            ) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _common(p: argparse.ArgumentParser, *, reply_wait: float | None = 30) -> None:
    p.add_argument("-u", "--user", type=check.user_id, help=USER_HELP)
    if reply_wait is not None:
        p.add_argument("--wait", "--timeout", dest="wait", type=check.reply_wait_duration,
                       default=reply_wait, metavar="DURATION", help=WAIT_REPLY_HELP)
    p.add_argument("--json", action="store_true",
                   help="print the pool's reply as one JSON object on stdout")


CLAIM_EPILOG = f"""\
examples:
  workerpool claim                         a worker for you, waiting up to CLAIM_WAIT_SECONDS
  workerpool claim --lease 2h --wait 5m    a two-hour lease; give up after five minutes
  workerpool claim --wait 0                a free worker now, or `unavailable` now
  workerpool claim --request-id cli-3f2a   pick up a claim whose answer was lost
  workerpool claim --json | jq -r .worker.url

While the claim waits, stderr shows its request id, the time waited and what the pool is
doing; Ctrl-C (or the end of the wait) cancels it, so no worker is leased to you afterwards.
A user who already holds MAX_LEASES_PER_USER workers gets the one they hold, its lease
unchanged (`workerpool renew` extends it). {DURATIONS}

{exit_codes("assigned", "unavailable, or cancelled by another client",
            chr(10) + "  130  interrupted: the claim was cancelled")}
"""


def _add_claim(sub: Any) -> None:
    from shared.client_claim import cmd_cancel, cmd_claim

    p = _parser(sub, "claim", "ask for a worker VM",
                "Ask the pool for a worker VM (code-server) and print its URL.", CLAIM_EPILOG)
    p.add_argument("-u", "--user", type=check.user_id, help=USER_HELP)
    p.add_argument("--lease", type=check.lease_duration, metavar="DURATION",
                   help="how long the worker is yours, 10s to 1d (default: LEASE_SECONDS)")
    p.add_argument("--wait", "--timeout", dest="wait", type=check.wait_duration,
                   metavar="DURATION", help="how long to wait for a worker when none is "
                   "free, 0 to 15m (default: CLAIM_WAIT_SECONDS)")
    p.add_argument("--request-id", type=check.request_id, metavar="ID",
                   help="the claim's idempotency key: the same id gets the same answer "
                   "(default: a new one, shown while waiting)")
    p.add_argument("--json", action="store_true",
                   help="print the pool's reply as one JSON object on stdout")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress on stderr (the answer still goes to stdout)")
    p.add_argument("--grace", type=float, default=30, help=argparse.SUPPRESS)
    p.set_defaults(func=guarded(cmd_claim))

    p = _parser(sub, "cancel", "give up a waiting claim",
                "Cancel a claim that is still waiting (e.g. one left behind by a lost "
                "connection); a claim already served is released.", f"""\
examples:
  workerpool cancel cli-3f2a9c51d0e4        the request id `workerpool claim` showed

{exit_codes("cancelled, or released", "no such claim of yours: not_found")}
""")
    p.add_argument("claim", type=check.request_id, metavar="REQUEST_ID",
                   help="the request id of the claim")
    _common(p)
    p.add_argument("--request-id", type=check.request_id, metavar="ID",
                   help="this cancel's own idempotency key (default: a new one)")
    p.set_defaults(func=guarded(cmd_cancel))


def _add_leases(sub: Any) -> None:
    from shared.client_leases import cmd_open, cmd_release, cmd_renew

    for name, func, summary, action in (
            ("release", cmd_release, "give a worker back", "Give a worker back now"),
            ("renew", cmd_renew, "extend a lease", "Extend the lease of a worker you hold")):
        extra = "  workerpool renew --lease 2h               two more hours from now\n" \
            if name == "renew" else ""
        p = _parser(sub, name, summary, f"{action} (default: the last worker you claimed on "
                    "this machine).", f"""\
examples:
  workerpool {name}                          your last claimed worker
  workerpool {name} i-0abc1234               a worker you hold (`workerpool status` lists them)
{extra}
{exit_codes(name.rstrip("e") + "ed", "not_found: not yours, or no longer leased")}
""")
        p.add_argument("instance", nargs="?", type=check.instance_id, metavar="INSTANCE",
                       help="the worker's instance id (default: your last claimed worker)")
        p.add_argument("--instance", dest="instance_opt", type=check.instance_id,
                       help=argparse.SUPPRESS)  # the v1 spelling, still accepted
        _common(p)
        if name == "renew":
            p.add_argument("--lease", type=check.lease_duration, metavar="DURATION",
                           help="new lease length from now, 10s to 1d (default: "
                           "LEASE_SECONDS)")
        p.add_argument("--request-id", type=check.request_id, metavar="ID",
                       help="idempotency key: the same id gets the same answer "
                       "(default: a new one)")
        p.set_defaults(func=guarded(func))

    p = _parser(sub, "open", "open your worker's code-server in a browser",
                "Open your worker's code-server, after checking that it presents the "
                "certificate its attested agent registered (https workers).", f"""\
examples:
  workerpool open                           your last claimed worker
  workerpool open --no-browser              check and print the URL only

{exit_codes("opened (or printed)", "the certificate is not the worker's: not opened")}
""")
    p.add_argument("-u", "--user", type=check.user_id, help=USER_HELP)
    p.add_argument("--url", help="a worker URL (default: your last claimed worker's)")
    p.add_argument("--fingerprint", metavar="SHA256",
                   help="the certificate's SHA-256 to expect (default: from the claim)")
    p.add_argument("--no-browser", action="store_true", help="check and print, do not open")
    p.set_defaults(func=guarded(cmd_open))


STATUS_EPILOG = """\
examples:
  workerpool status                         counts, claims waiting, desired/max, your leases
  workerpool status --watch                 live, until Ctrl-C
  workerpool status --json | jq .pool
  workerpool status --aws --watch           the operator's view (needs AWS credentials)

`workerpool status` asks a dispatcher (broker credentials only); --watch keeps going through
broker or dispatcher restarts, showing the last view with a note. Colour only on a
terminal, and never with NO_COLOR set.

""" + exit_codes("shown", None)


def _add_status(sub: Any) -> None:
    from shared.client_status import cmd_status

    p = _parser(sub, "status", "the pool at a glance, and your leases",
                "The pool's counts, waiting claims, the ASG's desired and max size, and "
                "your leases (URL, expiry, idle time).", STATUS_EPILOG)
    _common(p, reply_wait=10)
    p.add_argument("-w", "--watch", action="store_true",
                   help="redraw every --interval until Ctrl-C")
    p.add_argument("--interval", type=check.interval, default=2.0, metavar="SECONDS",
                   help="seconds between two views with --watch (default: %(default)gs)")
    p.add_argument("--aws", action="store_true",
                   help="the operator's view: every worker from the table, the ASG, queue "
                   "depths (needs AWS credentials)")
    p.set_defaults(func=guarded(cmd_status))


WATCH_EPILOG = """\
examples:
  workerpool watch                          your lease events until Ctrl-C
  workerpool watch --count 1                wait for the next event, then exit
  workerpool watch --json | jq -r .ends_at

Events: lease_ending (WARN_BEFORE_SECONDS before the lease ends, by expiry or idleness),
lease_extended (a renew, or new activity, moved that end), lease_ended. Events sent while
nobody watches are not kept; `workerpool status` shows where your leases stand.

exit codes:
  0    stopped (Ctrl-C), or --count events shown
  2    bad usage or configuration, or the broker does not let you watch this user
  3    broker unreachable, or the pool has not declared workerpool.events
"""


def _add_watch(sub: Any) -> None:
    from shared.client_watch import cmd_watch

    p = _parser(sub, "watch", "your lease events, live",
                "Show your lease events as they happen: a lease about to end, extended, "
                "ended.", WATCH_EPILOG)
    p.add_argument("-u", "--user", type=check.user_id, help=USER_HELP)
    p.add_argument("--json", action="store_true", help="each event as one JSON object")
    p.add_argument("--count", type=int, metavar="N",
                   help="exit after N events (default: until Ctrl-C)")
    p.set_defaults(func=guarded(cmd_watch))


def _cmd_completion(args: argparse.Namespace) -> int:
    import shtab

    from shared.cli import build_parser

    print(shtab.complete(build_parser(), shell=args.shell), end="")
    return 0


def _add_completion(sub: Any) -> None:
    p = _parser(sub, "completion", "print a shell completion script",
                "Print the completion script for your shell.", """\
examples:
  workerpool completion bash > ~/.local/share/bash-completion/completions/workerpool
  workerpool completion zsh > "${fpath[1]}/_workerpool"

exit codes:
  0    printed
""")
    p.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell")
    p.set_defaults(func=guarded(_cmd_completion))


def add_commands(sub: Any) -> None:
    """The client verbs, on ``workerpool``'s subparsers (shared/cli.py)."""
    _add_claim(sub)
    _add_leases(sub)
    _add_status(sub)
    _add_watch(sub)
    _add_completion(sub)
