"""One engine process per (engine settings, device) on the machine, shared by every caller.

Why a separate process:
- with the registry's CUDA torch, a process that imported TensorFlow first aborts when it imports
  torch, so the Keras layer's process must never import torch;
- TensorFlow grabs all GPU memory by default;
- N DataLoader workers must not load N copies of a multi-GB model.

Design: the service is a plain `python -m sr_augment.service` started with `subprocess.Popen` in a new
session (DataLoader workers are daemonic and may not start `multiprocessing` children, and the service
must outlive whichever process happened to start it). It listens on a Unix socket in a private
per-user folder outside the cache ($SR_AUGMENT_SERVICE_DIR, else $XDG_RUNTIME_DIR/sr-augment, else
<tmp>/sr-augment-<uid>; 0700, owner- and mode-checked, as is its key file). Both ends prove the peer
is this user (SO_PEERCRED) and hold the key (mutual HMAC challenge) before any pickle is sent. A file
lock, waited on with a timeout, makes concurrent first callers start exactly one service; a live
service of the same id (found in /proc) is never duplicated. Client threads queue requests; one worker
thread takes whatever arrived together (up to `batch_size`) and runs it as one engine batch. The
service exits `linger` seconds after its last client disconnects.

Failures: every client wait has a timeout (connect and handshake: `connect_timeout`; an answer:
`timeout`). A service that died (crash, OOM killer, SIGKILL) refuses connections: the client starts a
new one and sends the request again, once. A service that is alive but does not answer (hung) is
reported as a `ServiceError` naming its pid, never waited on forever, and not duplicated (two copies
of a model could not share one GPU).

Modules:
- `common`: the service id of an engine config, its private folder and files (socket, lock, key,
  log, pid) and their checks, `ServiceError` and the default timeouts; what client and server agree on.
- `identity`: the engine's name, scale and fingerprint, remembered in the cache folder (it travels
  with copies) so a warm cache never starts the service; `warm` records it too.
- `client`: `RemoteEngine`, which implements the `Engine` protocol (name, scale, fingerprint,
  upscale), so `SRCache` uses it exactly like a local engine.
- `launcher`: `ServiceLauncher`, which connects to the running service or starts one, and tells a
  dead service from a hung one.
- `server` (and `__main__`): the service process: loads the engine, batches requests, lingers.

Only `server` imports torch, and only in the service process: nothing imported from this package on
the client side does.
"""

from sr_augment.service.client import RemoteEngine
from sr_augment.service.common import (
                                       CONNECT_TIMEOUT,
                                       DEFAULT_LINGER,
                                       REQUEST_TIMEOUT,
                                       START_TIMEOUT,
                                       ServiceError,
                                       engine_config,
                                       service_dir,
                                       service_id,
)
from sr_augment.service.identity import identity_config, load_identity, remember_identity

__all__ = ["CONNECT_TIMEOUT", "DEFAULT_LINGER", "REQUEST_TIMEOUT", "START_TIMEOUT", "RemoteEngine", "ServiceError",
           "engine_config", "identity_config", "load_identity", "remember_identity", "service_dir", "service_id"]
