"""The CONTEXT reader: OpenNebula's writer rules round-trip, tricky inputs, nothing executed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_ctx.context import HEADER, find_context_file, load, parse, read_token, render
from flower_ctx.errors import ContextError
from flower_ctx.paths import Paths

names = st.from_regex(r"[A-Z_][A-Z0-9_]{0,20}", fullmatch=True)
# Any text OpenNebula could hold: quotes, newlines, CR, $, backslashes, backticks, non-ASCII. No NUL
# (a C string in oned cannot hold one) and no lone surrogates (not encodable as UTF-8).
values = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("'\"\\$`#=;|&()[]{}*?!~<> \t\r\n")),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    ),
    max_size=60,
)


@settings(max_examples=400)
@given(st.dictionaries(names, values, max_size=12))
def test_round_trip_with_opennebula_writer_rules(d: dict[str, str]) -> None:
    assert parse(render(d).encode("utf-8")) == d


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_context_error(data: bytes) -> None:
    try:
        result = parse(data, "fuzz")
    except ContextError as exc:
        assert str(exc).startswith("fuzz:")
    else:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())


def _one(value_literal: str) -> str:
    return parse(f"{HEADER}\nK={value_literal}\n".encode())["K"]


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("'it'\\''s'", "it's"),
        ("''\\'''", "'"),
        ("'\\'", "\\"),
        ("'$'", "$"),
        ("'$(reboot)'", "$(reboot)"),
        ("'`id`'", "`id`"),
        ("'$HOME ${PATH} $((1+1))'", "$HOME ${PATH} $((1+1))"),
        ("'a\tb'", "a\tb"),
        ("'a=b=c'", "a=b=c"),
        ("'#not a comment'", "#not a comment"),
        ("'say \"hi\"'", 'say "hi"'),
        ("'café ☃'", "café ☃"),
        ("'line1\r\nline2\r\n'", "line1\r\nline2\r\n"),
        ("'ends with two newlines\n\n'", "ends with two newlines\n\n"),
        ("''", ""),
        ("plain", "plain"),
    ],
)
def test_tricky_values_are_literal(literal: str, expected: str) -> None:
    assert _one(literal) == expected


def test_multiline_ssh_keys_with_comment_and_blank_line() -> None:
    keys = "ssh-ed25519 AAAA1 a@x\n# comment line\n\nssh-rsa AAAA2 b@y\nssh-ed25519 AAAA3 c@z"
    text = f"{HEADER}\nA='1'\nSSH_PUBLIC_KEY='{keys}'\nZ='2'\n"
    assert parse(text.encode()) == {"A": "1", "SSH_PUBLIC_KEY": keys, "Z": "2"}


def test_crlf_file_keeps_cr_inside_values_and_parses_lines() -> None:
    data = b"# header\r\nA='x'\r\nB='multi\r\nline'\r\n"
    assert parse(data) == {"A": "x", "B": "multi\r\nline"}


def test_empty_and_header_only_files_are_empty(tmp_path: Path) -> None:
    assert parse(b"") == {}
    assert parse(f"{HEADER}\n".encode()) == {}


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="no such file"):
        load(tmp_path / "nope.sh")


@pytest.mark.parametrize(
    "name", ["HOSTNAME", "PATH", "HOME", "IFS", "UID", "PPID", "SECONDS", "RANDOM", "_start_".upper(), "_"]
)
def test_shell_special_names_are_plain_data(name: str) -> None:
    assert parse(f"{name}='value'\n".encode()) == {name: "value"}


def test_any_name_opennebula_may_write_is_data() -> None:
    # XML-submitted templates keep their case; such names are read (and later ignored), never fatal.
    assert parse(b"foo='x'\n1ABC='y'\nmy-var='z'\nFl_Tls_Enabled='NO'\n") == {
        "foo": "x", "1ABC": "y", "my-var": "z", "Fl_Tls_Enabled": "NO"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"my var='x'\n", r":1: expected NAME='value'"),
        (b"=x\n", r":1: expected NAME='value'"),
        (b"\xef\xbb\xbfA='x'\n", r":1: starts with a byte-order mark"),
        (b"A='1'\nB='2'\nA='3'\n", r":3: A is set twice \(first on line 1\)"),
        (b"echo hi\n", r":1: expected NAME='value', found 'echo hi'"),
        (b";\n", r":1: expected NAME='value', found ';'"),
        (b"A='x'; rm -rf /\n", r":1: A: unquoted ';' would be shell code"),
        (b"A='x' B='y'\n", r":1: A: unexpected text after the value"),
        (b"A='unterminated\nB='y'\n", r"A: quote opened here is never closed"),
        (b"A=$(id)\n", r"A: unquoted '\$' would be shell code"),
        (b"A=`id`\n", r"A: unquoted '`' would be shell code"),
        (b'A="x"\n', r"A: double quotes are not OpenNebula's format"),
        (b"X='1'\nA='caf\xe9'\n", r":2: not valid UTF-8 \(byte 0xe9 at offset 12\)"),
    ],
)
def test_malformed_input_names_file_and_line(data: bytes, message: str) -> None:
    with pytest.raises(ContextError, match=message) as info:
        parse(data, "/ctx/context.sh")
    assert str(info.value).startswith("/ctx/context.sh:")


def test_large_base64_value() -> None:
    import base64

    blob = base64.b64encode(os.urandom(300_000)).decode()
    assert parse(render({"USER_DATA": blob}).encode())["USER_DATA"] == blob


def test_nothing_is_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    payloads = {
        "A": f"$(touch {marker})",
        "B": f"`touch {marker}`",
        "C": f"'; touch {marker}; '",
        "D": f"\n touch {marker}\n",
    }
    ctx = tmp_path / "context.sh"
    ctx.write_text(render(payloads))
    assert load(ctx).values == payloads
    # And a file written to look like code is refused, not run.
    ctx.write_text(f"A='x'\ntouch {marker}\n")
    with pytest.raises(ContextError):
        load(ctx)
    assert not marker.exists()


def test_newest_runtime_copy_wins(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.one_context_dir.mkdir(parents=True)
    local = paths.one_context_dir / "context.sh.local"
    network = paths.one_context_dir / "context.sh.network"
    local.write_text("A='local'\n")
    network.write_text("A='network'\n")
    os.utime(local, (1000, 1000))
    os.utime(network, (2000, 2000))
    assert find_context_file(paths) == network
    os.utime(local, (3000, 3000))
    assert find_context_file(paths) == local
    assert load(paths=paths).values == {"A": "local"}


def test_no_context_anywhere_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ContextError, match="context.sh.network.*pass --context FILE"):
        find_context_file(Paths(tmp_path))


def test_token_from_one_env_takes_only_tokentxt(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    paths.one_context_dir.mkdir(parents=True)
    marker = tmp_path / "pwned"
    paths.one_env.write_text(
        'export TOKENTXT="c2VjcmV0LXRva2Vu\n"\n'
        'export VMID="7"\n'
        f'export EVIL="$(touch {marker})"\n'
    )
    # The first line's value spans a newline in a broken one_env: not plain base64 on one line -> not taken.
    assert read_token(paths, None) is None
    paths.one_env.write_text(f'export TOKENTXT="c2VjcmV0LXRva2Vu"\nexport EVIL="$(touch {marker})"\n')
    assert read_token(paths, None) == "c2VjcmV0LXRva2Vu"
    assert not marker.exists()


def test_token_txt_beside_explicit_context(tmp_path: Path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text("VMID='3'\n")
    (tmp_path / "token.txt").write_text("dG9rZW4=\n")
    assert load(ctx).token == "dG9rZW4="


def test_env_overrides_only_with_use_env(tmp_path: Path) -> None:
    ctx = tmp_path / "context.sh"
    ctx.write_text("FL_LOG_LEVEL='INFO'\n")
    env = {"FL_LOG_LEVEL": "DEBUG", "UNRELATED": "x", "ETH0_IP": "10.0.0.9"}
    assert load(ctx, environ=env).values == {"FL_LOG_LEVEL": "INFO"}
    src = load(ctx, use_env=True, environ=env, env_names=frozenset({"FL_LOG_LEVEL"}))
    assert src.values == {"FL_LOG_LEVEL": "DEBUG", "ETH0_IP": "10.0.0.9"}
    assert src.env_names == {"FL_LOG_LEVEL", "ETH0_IP"}
