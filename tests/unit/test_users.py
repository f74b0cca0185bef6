"""Process user resolution from the security context, the image User and the container's own passwd/group."""

from __future__ import annotations

from pathlib import Path

import pytest

from cripy.containers.users import ProcessUser, parse_group, parse_passwd, resolve_in_root, resolve_user
from cripy.errors import InvalidArgument

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment line
broken line without fields
www:x:33:33:www-data:/var/www:/bin/sh
app:x:1000:1001:App:/home/app:/bin/sh
nohome:x:1002:1002:::/bin/sh
"""
GROUP = """root:x:0:
daemon:x:1:
www:x:33:app
app:x:1001:
audio:x:29:app,www
video:x:44: app , other
staff:x:50:root
"""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "etc" / "group").write_text(GROUP)
    return root


def resolve(root: Path, **kwargs) -> ProcessUser:
    args = dict(run_as_user=None, run_as_group=None, run_as_username="", image_user="", supplemental_groups=[])
    args.update(kwargs)
    return resolve_user(root, **args)


def test_no_user_anywhere_is_root_with_root_home_and_groups(rootfs):
    user = resolve(rootfs)
    assert (user.uid, user.gid, user.home, user.username) == (0, 0, "/root", "root")
    assert user.additional_gids == [0, 50]


def test_run_as_user_with_passwd_entry_takes_its_gid_and_home(rootfs):
    user = resolve(rootfs, run_as_user=1000, image_user="www")
    assert (user.uid, user.gid, user.home) == (1000, 1001, "/home/app")
    assert user.additional_gids == [1001, 33, 29, 44]


def test_run_as_user_without_passwd_entry_gets_gid_0_and_slash_home(rootfs):
    user = resolve(rootfs, run_as_user=4242)
    assert user == ProcessUser(uid=4242, gid=0, additional_gids=[0], home="/", username="")


def test_run_as_group_overrides_passwd_gid(rootfs):
    user = resolve(rootfs, run_as_user=1000, run_as_group=7)
    assert (user.uid, user.gid) == (1000, 7)
    assert 1001 not in user.additional_gids  # the passwd gid is not added back as a supplementary group
    assert user.additional_gids[0] == 7


def test_run_as_group_without_user_is_invalid(rootfs):
    with pytest.raises(InvalidArgument, match="run_as_group"):
        resolve(rootfs, run_as_group=5)


def test_run_as_group_with_username_is_fine(rootfs):
    user = resolve(rootfs, run_as_username="www", run_as_group=5)
    assert (user.uid, user.gid) == (33, 5)


def test_run_as_user_wins_over_username_and_image_user(rootfs):
    assert resolve(rootfs, run_as_user=33, run_as_username="app", image_user="daemon").uid == 33


def test_run_as_username_wins_over_image_user(rootfs):
    assert resolve(rootfs, run_as_username="daemon", image_user="app").uid == 1


def test_unknown_username_is_invalid_argument_naming_passwd(rootfs):
    with pytest.raises(InvalidArgument, match=r"user 'ghost' not found in /etc/passwd of the image"):
        resolve(rootfs, run_as_username="ghost")


@pytest.mark.parametrize(
    ("image_user", "uid", "gid"),
    [
        ("app", 1000, 1001),
        ("1000", 1000, 1001),
        ("4242", 4242, 0),
        ("app:audio", 1000, 29),
        ("app:44", 1000, 44),
        ("33:33", 33, 33),
        ("4242:4343", 4242, 4343),
        ("4242:audio", 4242, 29),
    ],
)
def test_image_user_forms(rootfs, image_user, uid, gid):
    user = resolve(rootfs, image_user=image_user)
    assert (user.uid, user.gid) == (uid, gid)


def test_image_user_unknown_name_is_invalid(rootfs):
    with pytest.raises(InvalidArgument, match="not found in /etc/passwd"):
        resolve(rootfs, image_user="nobody")


def test_image_user_unknown_group_is_invalid(rootfs):
    with pytest.raises(InvalidArgument, match=r"group 'wheel' not found in /etc/group"):
        resolve(rootfs, image_user="app:wheel")


@pytest.mark.parametrize("image_user", [":", "app:", ":audio"])
def test_malformed_image_user_is_invalid(rootfs, image_user):
    with pytest.raises(InvalidArgument, match="malformed"):
        resolve(rootfs, image_user=image_user)


def test_supplemental_groups_merge_dedupe_and_primary_first(rootfs):
    user = resolve(rootfs, run_as_user=1000, supplemental_groups=[29, 1001, 500, 500])
    assert user.gid == 1001
    assert user.additional_gids == [1001, 33, 29, 44, 500]


def test_merge_is_the_default_policy(rootfs):
    assert resolve(rootfs, run_as_user=1000, supplemental_groups=[500]) == \
        resolve(rootfs, run_as_user=1000, supplemental_groups=[500], supplemental_groups_policy="merge")


def test_strict_policy_ignores_image_groups(rootfs):
    user = resolve(rootfs, run_as_user=1000, supplemental_groups=[500], supplemental_groups_policy="strict")
    assert (user.uid, user.gid) == (1000, 1001)  # the primary gid still comes from /etc/passwd
    assert user.additional_gids == [1001, 500]


@pytest.mark.parametrize(("policy", "groups"), [("merge", [1001, 33, 29, 44]), ("strict", [1001])])
def test_policy_for_a_user_named_by_the_image(rootfs, policy, groups):
    user = resolve(rootfs, image_user="app", supplemental_groups_policy=policy)
    assert user.additional_gids == groups


@pytest.mark.parametrize("policy", ["merge", "strict"])
def test_policy_with_run_as_group_and_requested_groups(rootfs, policy):
    user = resolve(rootfs, run_as_user=1000, run_as_group=3000, supplemental_groups=[4000, 3000],
                   supplemental_groups_policy=policy)
    image_groups = [33, 29, 44] if policy == "merge" else []
    assert user.gid == 3000
    assert user.additional_gids == [3000, *image_groups, 4000]


@pytest.mark.parametrize("policy", ["merge", "strict"])
def test_a_uid_without_passwd_entry_gets_only_requested_groups(rootfs, policy):
    user = resolve(rootfs, run_as_user=4242, supplemental_groups=[29], supplemental_groups_policy=policy)
    assert user.additional_gids == [0, 29]


def test_empty_home_field_means_slash(rootfs):
    assert resolve(rootfs, run_as_user=1002).home == "/"


def test_numeric_user_works_without_passwd_file(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    assert resolve(root, image_user="123:456") == ProcessUser(123, 456, [456], "/", "")


def test_named_user_without_passwd_file_is_invalid(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(InvalidArgument, match="has no /etc/passwd"):
        resolve(root, image_user="app")


def test_absolute_passwd_symlink_resolves_inside_rootfs_not_on_host(tmp_path):
    host_file = tmp_path / "host-secrets"
    host_file.write_text("hostonly:x:0:0::/host:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to(str(host_file))  # an absolute path that exists only on the host
    with pytest.raises(InvalidArgument, match="hostonly"):
        resolve(root, image_user="hostonly")
    # The same absolute target inside the rootfs is what gets read.
    inside = root / str(host_file).lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text("imgonly:x:7:8::/img:/bin/sh\n")
    assert resolve(root, image_user="imgonly") == ProcessUser(7, 8, [8], "/img", "imgonly")


def test_dotdot_symlink_cannot_climb_out_of_rootfs(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("hostonly:x:0:0::/host:/bin/sh\n")
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("../../../../../../etc/passwd")
    # "../.." stops at the rootfs root, so the link names rootfs/etc/passwd itself: a loop, not a host file.
    with pytest.raises(InvalidArgument):
        resolve(root, image_user="hostonly")


def test_symlinked_etc_directory_inside_rootfs_is_followed(tmp_path):
    root = tmp_path / "rootfs"
    (root / "private" / "etc").mkdir(parents=True)
    (root / "private" / "etc" / "passwd").write_text("svc:x:10:20::/srv:/bin/sh\n")
    (root / "etc").symlink_to("/private/etc")
    assert resolve(root, image_user="svc") == ProcessUser(10, 20, [20], "/srv", "svc")


def test_resolve_in_root_handles_relative_links_and_missing_leaf(tmp_path):
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "link").symlink_to("b/../b")
    (root / "abs").symlink_to("/a/link")
    assert resolve_in_root(root, "/abs/missing") == root / "a" / "b" / "missing"
    assert resolve_in_root(root, "/../../a/./b") == root / "a" / "b"


def test_symlink_loop_is_reported(tmp_path):
    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidArgument, match="cannot read /etc/passwd"):
        resolve(root, image_user="x")


def test_parsers_skip_malformed_lines():
    assert [e.name for e in parse_passwd(PASSWD)] == ["root", "daemon", "www", "app", "nohome"]
    groups = {g.name: g.members for g in parse_group(GROUP)}
    assert groups["video"] == ["app", "other"]
    assert parse_passwd("bad:x:notanumber:0::/:/bin/sh\n") == []
