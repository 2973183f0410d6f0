"""Kaggle for real: client layer, ledger, push / status / pull / submit, sweeps, retries, emulator.

Modules, bottom up: `retry` (back-off, rate-limit and call budgets), `timeouts` (connect/read timeouts
the client lacks), `slugs` (Kaggle's slug rule), `images` (the version table of Kaggle's images and the
second environment), `client` (the kaggle package, lazily, plus credentials), `ledger`
(.kit/ledger.json), `reconcile` (did a push land? fingerprints, polling), `status`, `push`, `pull`,
`submit`, `plan` (accelerator hours of an ensemble against Kaggle's quotas, before a push);
`emulator/` (the HTTP stand-in for Kaggle, kaggle.com's behaviours by default, the faults it can inject
and the answers a test scripts).

What kit guarantees for every call it makes, whatever Kaggle answers (400, 401, 403, 404, 409, 429
with any Retry-After, 5xx with an HTML page, an empty or truncated body, a stall, a lost reply, lag of
any length, pages of any size); docs/kaggle-invariants.md has the reasons, tests/test_kaggle_properties.py
checks them as properties and tests/test_kaggle_answers.py one behaviour at a time:
1. No traceback: a failure is one `error:` line naming the call (push ..., status ..., submit ...) and
   what to do (try again later, fix what Kaggle names, check with ..., --force ...).
2. No duplicate kernel version: a push is sent again only when Kaggle did no work (429, a refused
   connection) or has *shown* the kernel without it. A lost reply while Kaggle shows nothing stops
   with one line (what kit knows, how to check, how to force) and keeps the pending record; a later
   `kit push` settles it ($KIT_PENDING_SETTLE_S before "shows nothing" means "lost").
3. No duplicate submission: a submit whose reply is lost is looked up by its unique description first.
4. The ledger is consistent and written atomically (temp file + rename, under a lock): versions unique
   and ordered, a pending push only while kit cannot tell whether it landed.
5. Every wait is bounded and announced: retries say what they wait for and how long; transient
   failures stop after $KIT_CALL_BUDGET_S (90 s) per call, 429s after $KIT_RATE_LIMIT_MAX_S, waits
   for Kaggle's lag after $KIT_CONSISTENCY_S, runs after $KIT_WAIT_TIMEOUT_S.
6. Retry-After is honoured on every call, pushes and submits included (seconds or an HTTP date,
   capped at 10 minutes): kit never asks again sooner.
7. Credential problems are named as such with the fix: a 401 (revoked or wrong key), an expired
   token (checked at connect), missing credentials.
8. The kernel kit tracks is the kernel Kaggle made: slugs computed as Kaggle does (`slugs`), a title
   whose slug is not the id's refused before anything is sent, the reply's URL trusted over kit's id,
   the client's warnings passed on.
"""
