"""Files cwsctl writes or trusts (issue 20 items 4, 5, 6, 9, 10, 11, 12, 13, 18, 19).

Real files in tmp dirs, real cwsctl subprocesses (with their own umask or resource limits), the
CWS sandbox on 127.0.0.1 where a request is needed. "Nothing was sent" is checked on the server:
no patient stored, and no audit entry (cwsctl writes one per request).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cwsctl.core.bulk.journal import Journal
from cwsctl.core.bulk.report import ReportWriter
from cwsctl.core.files import atomic_write
from tests.cli.test_patients_bulk import patient, write_csv

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def cwsctl(home: Path, *args: str, umask: int = 0o022, env=None, limits=None, timeout=120):
    """cwsctl as a subprocess with its own umask (and optional RLIMIT_FSIZE, SIGXFSZ ignored)."""

    def prepare() -> None:
        os.umask(umask)
        if limits is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limits, limits))

    full_env = {**os.environ, "CWSCTL_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cwsctl", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=full_env,
        timeout=timeout,
        preexec_fn=prepare,
    )


def one_error_line(result, code: int, *needles: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == code, err
    assert "Traceback" not in err and "internal error" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("cwsctl: error:")]
    assert len(errors) == 1, err
    for needle in needles:
        assert needle in errors[0], err
    return err


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def nothing_sent(sandbox, home: Path) -> None:
    assert not sandbox.store.find_patients("EXT00000")
    assert not (home / "audit" / "default.jsonl").exists()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def patient_file(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "rows.csv", [patient(i) for i in range(3)])


# -- item 4: PHI files 0600 (or the umask's narrower mode), never 0644 -------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o277])
def test_request_output_is_private_whatever_the_umask(
    umask, sandbox, sandbox_profile, cwsctl_home, tmp_path
):
    stored = sandbox.store.insert_patient({**patient(0), "dob": "2000-04-12 00:00:00.000"})
    out = tmp_path / "patient.json"
    path = f"/ws/patients/{stored['id']}"
    result = cwsctl(cwsctl_home, "request", "GET", path, "-o", str(out), umask=umask)
    assert result.returncode == 0, result.stderr.decode()
    expected = 0o600 & ~umask
    assert stat.S_IMODE(out.stat().st_mode) == expected
    assert stat.S_IMODE(Path(f"{out}.sig").stat().st_mode) == expected


@pytest.mark.parametrize("name", ["report.csv", "report.json"])
def test_bulk_report_and_journal_are_private(
    name, sandbox, sandbox_profile, cwsctl_home, tmp_path, patient_file
):
    report = tmp_path / name
    result = cwsctl(
        cwsctl_home, "patients", "create", "--from", str(patient_file), "--report", str(report)
    )
    assert result.returncode == 0, result.stderr.decode()
    assert stat.S_IMODE(report.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(f"{patient_file}.journal").stat().st_mode) == 0o600


def test_atomic_write_never_adds_bits_the_umask_removed(tmp_path):
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "public.pem", b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "public.pem").stat().st_mode) == 0o600


# -- item 5: temp files O_EXCL|O_NOFOLLOW, planted symlinks never followed -------------------


def test_report_temp_name_planted_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    report = tmp_path / "report.csv"
    # The name the old code used for its temporary file: anyone who can write the directory
    # can plant it (the pid is easy to guess in a shared directory).
    (tmp_path / f".report.csv.{os.getpid()}.tmp").symlink_to(victim)
    writer = ReportWriter(report)
    writer.close()
    assert victim.read_bytes() == b"precious\n"
    assert report.read_bytes().startswith(b"row,external_id")
    assert not report.is_symlink()


def test_report_target_symlink_is_refused_and_the_victim_unchanged(
    sandbox, sandbox_profile, cwsctl_home, tmp_path, patient_file
):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    report = tmp_path / "report.csv"
    report.symlink_to(victim)
    result = cwsctl(
        cwsctl_home, "patients", "create", "--from", str(patient_file), "--report", str(report)
    )
    one_error_line(result, 2, str(report), "symbolic link")
    assert victim.read_bytes() == b"precious\n"
    nothing_sent(sandbox, cwsctl_home)


def test_output_target_symlink_is_refused_before_sending(
    sandbox, sandbox_profile, cwsctl_home, tmp_path
):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out.json"
    out.symlink_to(victim)
    result = cwsctl(cwsctl_home, "request", "GET", "/ws/patients/1", "-o", str(out))
    one_error_line(result, 2, str(out), "symbolic link")
    assert victim.read_bytes() == b"precious\n"
    assert not (cwsctl_home / "audit" / "default.jsonl").exists()


def test_atomic_file_temp_is_exclusive_and_removed_on_abort(tmp_path):
    from cwsctl.core.files import AtomicFile

    target = tmp_path / "t.bin"
    handle = AtomicFile(target)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    with pytest.raises(FileExistsError):  # nobody else can open our name
        os.open(handle.tmp, flags)
    handle.write(b"half")
    handle.abort()
    assert not target.exists() and leftovers(tmp_path) == []


# -- item 6: --journal naming a file that is not a journal -----------------------------------


def test_journal_naming_a_csv_leaves_it_byte_identical(
    sandbox, sandbox_profile, cwsctl_home, tmp_path, patient_file
):
    bookings = write_csv(tmp_path / "bookings.csv", [patient(7), patient(8)])
    with open(bookings, "ab") as handle:
        handle.write(b"EXT99999,10000,2,1,Torn,Line,2000-04-12,M,B9,2023-04-07")  # no newline
    before = bookings.read_bytes()
    result = cwsctl(
        cwsctl_home, "patients", "create", "--from", str(patient_file), "--journal", str(bookings)
    )
    one_error_line(result, 2, str(bookings), "not a cwsctl journal")
    assert bookings.read_bytes() == before
    nothing_sent(sandbox, cwsctl_home)


def test_a_journal_with_a_torn_last_line_is_still_repaired(tmp_path):
    path = tmp_path / "j.journal"
    with Journal(path) as journal:
        journal.record(journal.key_for("A", "1"), 1, "sending")
    with open(path, "ab") as handle:
        handle.write(b'{"key":"abc","ro')
    with Journal(path) as journal:
        assert journal.torn_lines == 1
    assert path.read_bytes().endswith(b"\n")


def test_a_torn_journal_header_is_repaired_not_refused(tmp_path):
    path = tmp_path / "j.journal"
    path.write_bytes(b'{"journal":1,"sa')
    path.chmod(0o600)
    with Journal(path) as journal:
        assert journal.torn_lines == 1


# -- item 9: config.toml and token file read-modify-write under a lock ---------------------


@pytest.mark.slow
def test_twelve_concurrent_profile_inits_keep_all_twelve(cwsctl_home):
    env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home)}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cwsctl",
                "-q",
                "profile",
                "init",
                f"p{i:02d}",
                "--url",
                f"https://cws{i}.example.org",
                "--username",
                f"u{i}",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(12)
    ]
    results = [(p.wait(timeout=120), p.stderr.read().decode()) for p in processes]
    assert all(code == 0 for code, _ in results), results
    from cwsctl.core.profile import Store

    config = Store(cwsctl_home).load()
    assert sorted(config.profiles) == [f"p{i:02d}" for i in range(12)]
    assert config.default_profile in config.profiles
    for i in range(12):
        assert config.profiles[f"p{i:02d}"].url == f"https://cws{i}.example.org"


@pytest.mark.slow
def test_token_file_registration_write_waits_for_the_lock(cwsctl_home):
    tokens = cwsctl_home / "tokens"
    tokens.mkdir(parents=True, mode=0o700)
    lock = os.open(tokens / "emr.json.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    code = (
        "from cwsctl.protocols.oauth2.tokens import TokenStore; from cwsctl.core.profile import Store;"
        "TokenStore(Store(), 'emr').save_registration({'client_id': 'c1'})"
    )
    env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        time.sleep(1.5)
        assert child.poll() is None  # still waiting for the lock
        assert not (tokens / "emr.json").exists()
    finally:
        os.close(lock)
    assert child.wait(timeout=60) == 0
    assert b'"c1"' in (tokens / "emr.json").read_bytes()


# -- item 10: output paths checked before anything is sent or replaced ----------------------


@pytest.mark.parametrize("where", ["dir", "missing"])
def test_request_output_directory_or_missing_directory_is_exit_2_before_sending(
    where, sandbox, sandbox_profile, cwsctl_home, tmp_path
):
    body = tmp_path / "body.json"
    body.write_text('{"external_id": "EXT00000"}')
    out = tmp_path if where == "dir" else tmp_path / "nowhere" / "out.json"
    result = cwsctl(
        cwsctl_home, "request", "POST", "/ws/patients/", str(body), "--output", str(out)
    )
    one_error_line(result, 2, str(out))
    assert not (cwsctl_home / "audit" / "default.jsonl").exists()


@pytest.mark.parametrize("option", ["--journal", "--report"])
@pytest.mark.parametrize("where", ["dir", "missing"])
def test_bulk_journal_or_report_in_a_bad_place_is_exit_2_before_sending(
    option, where, sandbox, sandbox_profile, cwsctl_home, tmp_path, patient_file
):
    if where == "dir":  # named like a report, so only its being a directory is wrong
        target = tmp_path / "out.csv"
        target.mkdir()
    else:
        target = tmp_path / "nowhere" / "f.csv"
    result = cwsctl(
        cwsctl_home, "patients", "create", "--from", str(patient_file), option, str(target)
    )
    one_error_line(result, 2, str(target))
    nothing_sent(sandbox, cwsctl_home)


def test_sign_raw_out_directory_is_exit_2(sandbox_profile, cwsctl_home, tmp_path):
    body = tmp_path / "body.json"
    body.write_text("{}")
    result = cwsctl(cwsctl_home, "sign", str(body), "--raw-out", str(tmp_path))
    one_error_line(result, 2, str(tmp_path))


def test_keygen_force_public_out_directory_keeps_the_old_key(cwsctl_home, tmp_path):
    assert cwsctl(cwsctl_home, "-q", "keygen", "--bits", "2048").returncode == 0
    key = cwsctl_home / "keys" / "default.pem"
    before = digest(key)
    result = cwsctl(
        cwsctl_home, "keygen", "--bits", "2048", "--force", "--public-out", str(tmp_path)
    )
    one_error_line(result, 2, str(tmp_path))
    assert digest(key) == before


def test_full_disk_output_is_one_line_and_leaves_nothing_half_written(
    sandbox_profile, cwsctl_home, tmp_path
):
    body = tmp_path / "body.json"
    body.write_text("{}")
    sig = tmp_path / "sig.bin"
    sig.write_bytes(b"old")
    # A 2048-bit signature is 256 bytes: past a 100-byte file size limit (EFBIG, like ENOSPC).
    result = cwsctl(cwsctl_home, "sign", str(body), "--raw-out", str(sig), limits=100)
    one_error_line(result, 2, str(sig), "no space left")
    assert sig.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_full_disk_journal_is_one_line_and_whole_lines(
    sandbox, sandbox_profile, cwsctl_home, tmp_path, patient_file
):
    journal = tmp_path / "rows.journal"
    with Journal(journal) as earlier:  # an earlier run's journal, close to the size limit
        for i in range(100):
            earlier.record(earlier.key_for(f"OLD{i}", "1"), i, "created", id=i)
    size = journal.stat().st_size
    result = cwsctl(
        cwsctl_home,
        "patients",
        "create",
        "--from",
        str(patient_file),
        "--journal",
        str(journal),
        "--concurrency",
        "1",
        limits=size + 250,  # room for a line or two, not for three rows
    )
    one_error_line(result, 2, str(journal), "no space left")
    assert journal.read_bytes().endswith(b"\n")
    with Journal(journal) as reopened:  # still a journal the next run can use
        assert reopened.torn_lines == 0


def test_unwritable_audit_log_is_exit_3(sandbox, sandbox_profile, cwsctl_home):
    (cwsctl_home / "audit" / "default.jsonl").mkdir(parents=True)  # a directory in its place
    result = cwsctl(cwsctl_home, "request", "GET", "/ws/")
    one_error_line(result, 3, "audit log")


def test_tokens_in_the_way_is_exit_3(cwsctl_home):
    cwsctl_home.mkdir(parents=True, exist_ok=True)
    (cwsctl_home / "tokens").write_text("a file where a directory belongs")
    from cwsctl.core.errors import LocalKeyError
    from cwsctl.core.profile import Store
    from cwsctl.protocols.oauth2.tokens import TokenStore

    with pytest.raises(LocalKeyError, match="tokens"):
        TokenStore(Store(cwsctl_home), "emr").save_registration({"client_id": "c"})


@pytest.fixture
def read_only_dir(tmp_path):
    """A directory nobody (root included) can create files in: a read-only tmpfs when root."""
    path = tmp_path / "ro"
    path.mkdir()
    if IS_ROOT:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)])
        if done.returncode != 0:
            pytest.skip("root without mount: cannot make an unwritable directory")
        yield path
        subprocess.run(["umount", str(path)])
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)


@pytest.mark.parametrize("inside", [True, False])
def test_unwritable_home_is_exit_3(inside, read_only_dir):
    home = read_only_dir / "home" if inside else read_only_dir
    result = cwsctl(
        home, "profile", "init", "x", "--url", "https://cws.example.org", "--username", "u"
    )
    one_error_line(result, 3, str(home))


def test_unwritable_output_directory_is_exit_2(
    sandbox_profile, cwsctl_home, tmp_path, read_only_dir
):
    body = tmp_path / "body.json"
    body.write_text("{}")
    result = cwsctl(cwsctl_home, "sign", str(body), "--raw-out", str(read_only_dir / "sig.bin"))
    one_error_line(result, 2, str(read_only_dir / "sig.bin"))


# -- items 11, 12: empty and newline-ended profile names -------------------------------------


def test_empty_profile_option_is_exit_2_not_the_default(sandbox, sandbox_profile, cwsctl_home):
    result = cwsctl(cwsctl_home, "-p", "", "request", "GET", "/ws/")
    one_error_line(result, 2, "empty profile name")
    assert not (cwsctl_home / "audit" / "default.jsonl").exists()


def test_empty_profile_variable_is_exit_2_not_the_default(sandbox, sandbox_profile, cwsctl_home):
    result = cwsctl(cwsctl_home, "request", "GET", "/ws/", env={"CWSCTL_PROFILE": ""})
    one_error_line(result, 2, "empty profile name")
    assert not (cwsctl_home / "audit" / "default.jsonl").exists()
    result = cwsctl(cwsctl_home, "keygen", env={"CWSCTL_PROFILE": ""})
    one_error_line(result, 2, "empty profile name")


def test_profile_name_with_a_trailing_newline_is_refused(cwsctl_home):
    args = ["profile", "init", "x\n", "--url", "https://cws.example.org", "--username", "u"]
    one_error_line(cwsctl(cwsctl_home, *args), 3, "invalid profile name")
    assert not (cwsctl_home / "config.toml").exists()


# -- item 13: CWSCTL_HOME's mode -------------------------------------------------------------


def test_an_existing_shared_home_keeps_its_mode_and_doctor_warns(tmp_path):
    home = tmp_path / "shared"
    home.mkdir()
    home.chmod(0o2775)
    args = ["profile", "init", "x", "--url", "https://cws.example.org", "--username", "u"]
    assert cwsctl(home, *args).returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o2775
    doctor = cwsctl(home, "doctor", "--timeout", "1")
    assert "writable by its group" in doctor.stderr.decode() + doctor.stdout.decode()


def test_a_new_home_and_its_parents_are_created_0700(tmp_path):
    home = tmp_path / "new" / "cwsctl"
    args = ["profile", "init", "x", "--url", "https://cws.example.org", "--username", "u"]
    assert cwsctl(home, *args).returncode == 0
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(home.parent.stat().st_mode) == 0o700


# -- item 18: --site and basic-auth usernames ------------------------------------------------


def test_openemr_site_is_validated_like_a_profile_name(cwsctl_home):
    result = cwsctl(
        cwsctl_home,
        "profile",
        "init",
        "emr",
        "--kind",
        "openemr",
        "--url",
        "https://127.0.0.1:9",
        "--site",
        "../../x",
        "--timeout",
        "1",
    )
    one_error_line(result, 2, "invalid OpenEMR site")
    assert not (cwsctl_home / "config.toml").exists()


def test_stored_site_that_escapes_is_a_profile_error(cwsctl_home):
    cwsctl_home.mkdir(parents=True)
    (cwsctl_home / "config.toml").write_text(
        'default_profile = "emr"\n[profiles.emr]\nkind = "openemr"\n'
        'url = "https://emr.example.org"\nsite = "../x"\nclient_id = "c"\nscope = "openid"\n'
    )
    one_error_line(cwsctl(cwsctl_home, "profile", "show"), 3, "invalid OpenEMR site")


def test_basic_auth_username_with_a_colon_is_refused(cwsctl_home, tmp_path):
    password = tmp_path / "pw"
    password.write_text("secret\n")
    password.chmod(0o600)
    result = cwsctl(
        cwsctl_home,
        "profile",
        "init",
        "cdr",
        "--kind",
        "openehr",
        "--url",
        "https://cdr.example.org/ehrbase/rest/openehr/v1",
        "--auth",
        "basic",
        "--username",
        "ali:ce",
    )
    one_error_line(result, 2, "':'")
    assert not (cwsctl_home / "config.toml").exists()


# -- item 19: loose token files, foreign journals, core dumps --------------------------------


def test_token_file_readable_by_others_is_refused_with_the_fix(cwsctl_home):
    from cwsctl.core.errors import LocalKeyError
    from cwsctl.core.profile import Store
    from cwsctl.protocols.oauth2.tokens import TokenStore

    tokens = TokenStore(Store(cwsctl_home), "emr")
    tokens.save_registration({"client_id": "c"})
    tokens.path.chmod(0o644)
    with pytest.raises(LocalKeyError) as caught:
        tokens.read()
    assert caught.value.exit_status == 3
    assert caught.value.hint == f"chmod 600 {tokens.path}"


def test_group_writable_journal_is_refused(tmp_path):
    path = tmp_path / "j.journal"
    Journal(path).close()
    path.chmod(0o664)
    before = path.read_bytes()
    from cwsctl.core.errors import InputError

    with pytest.raises(InputError, match="others can write it"):
        Journal(path)
    assert path.read_bytes() == before


@pytest.mark.skipif(not IS_ROOT, reason="making a file of another user needs root")
def test_journal_of_another_user_is_refused(tmp_path):
    path = tmp_path / "j.journal"
    Journal(path).close()
    os.chown(path, 65534, 65534)
    from cwsctl.core.errors import InputError

    with pytest.raises(InputError, match="belongs to another user"):
        Journal(path)


def test_journal_symlink_is_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "j.journal"
    path.symlink_to(victim)
    from cwsctl.core.errors import InputError

    with pytest.raises(InputError, match="symbolic link"):
        Journal(path)
    assert victim.read_bytes() == b"precious"


def test_core_dumps_are_disabled_once_a_passphrase_is_read(cwsctl_home, tmp_path):
    passphrase = tmp_path / "pass"
    passphrase.write_text("right\n")
    passphrase.chmod(0o600)
    code = (
        "import resource, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_CORE)\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))\n"
        "assert hard != 0, 'this environment allows no core dumps at all'\n"
        "from cwsctl.cli.main import run\n"
        "status = run(['-q', 'keygen', '--bits', '2048', '--passphrase-file', sys.argv[1]])\n"
        "print(status, resource.getrlimit(resource.RLIMIT_CORE)[0])\n"
    )
    env = {**os.environ, "CWSCTL_HOME": str(cwsctl_home)}
    done = subprocess.run(
        [sys.executable, "-c", code, str(passphrase)], env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().splitlines()[-1] == "0 0"  # no core file from here on


def test_a_stored_secret_others_can_read_is_refused_and_core_dumps_go_off(tmp_path):
    """Issue 20 item 19: the stored openEHR password/token file is checked like a key, and the
    process that reads it writes no core dump (run in a child: the limit cannot be raised again)."""
    from cwsctl.core.profile import Store
    from cwsctl.core.secrets import secrets_path, store_secret

    home = tmp_path / "home"
    store_secret(Store(home), "cdr", "password", "s3cret-pw")
    path = secrets_path(Store(home), "cdr")
    code = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from cwsctl.core.errors import CwsError\n"
        "from cwsctl.core.profile import Store\n"
        "from cwsctl.core.secrets import resolve_secret\n"
        "try:\n"
        "    print('value', resolve_secret(Store(Path(sys.argv[1])), 'cdr', 'password'))\n"
        "except CwsError as exc:\n"
        "    print('refused', int(exc.exit_status), exc.hint, '|', exc.message)\n"
        "print(resource.getrlimit(resource.RLIMIT_CORE)[0])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWSCTL_PASSWORD")}

    def child() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", code, str(home)], env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode().splitlines()

    path.chmod(0o644)
    refused = child()
    assert refused[0].startswith("refused 3 chmod 600") and "s3cret" not in refused[0]
    assert refused[-1] == "0"
    path.chmod(0o600)
    assert child()[0] == "value s3cret-pw"
