"""libvirtd.conf managed key by key, through Salt's loader, on a copy of a packaged file."""

PACKAGED = """# Master libvirt daemon configuration file
#
#listen_tls = 0
#listen_tcp = 1
#unix_sock_group = "libvirt"
#unix_sock_ro_perms = "0777"
#unix_sock_rw_perms = "0770"
#auth_unix_rw = "polkit"
auth_tcp = "none"
#key_file = "/etc/pki/libvirt/private/serverkey.pem"
"""


def _run(make_loaders, parameters, conf, env, test):
    funcs, states, _ = make_loaders(test=test)
    funcs["kvmcluster_model.load"](parameters)
    return states["kvmcluster_libvirt.config_managed"](
        "cfg", path=str(conf), env_file=str(env), env={"LIBVIRTD_ARGS": ""})


def test_config_key_by_key(make_loaders, parameters, tmp_path):
    conf, env = tmp_path / "libvirtd.conf", tmp_path / "libvirtd.env"
    conf.write_text(PACKAGED)
    env.write_text('# Options\nLIBVIRTD_ARGS="--timeout 120"\n')
    predicted = _run(make_loaders, parameters, conf, env, test=True)
    assert predicted["result"] is None
    assert conf.read_text() == PACKAGED  # test=True wrote nothing
    applied = _run(make_loaders, parameters, conf, env, test=False)
    assert applied["result"] is True and applied["changes"] == predicted["changes"]
    changes = applied["changes"][str(conf)]
    assert changes["auth_tcp"] == {"old": '"none"', "new": '"sasl"'}
    assert changes["listen_tcp"] == {"old": None, "new": "0"}
    text = conf.read_text()
    assert 'auth_tcp = "sasl"' in text and "#listen_tcp = 1" in text  # comments kept
    assert text.count("auth_tcp") == 1  # replaced in place, not appended twice
    assert 'LIBVIRTD_ARGS=""' in env.read_text()
    again = _run(make_loaders, parameters, conf, env, test=False)
    assert (again["result"], again["changes"]) == (True, {})


def test_tls_enabled_without_files_fails(make_loaders, parameters, tmp_path):
    conf = tmp_path / "libvirtd.conf"
    conf.write_text(PACKAGED)
    funcs, states, context = make_loaders()
    funcs["kvmcluster_model.load"](parameters)
    context["kvmcluster_model.model"]["libvirt"]["tls"]["enabled"] = True
    ret = states["kvmcluster_libvirt.config_managed"]("cfg", path=str(conf))
    assert ret["result"] is False
    assert "tls:enabled is true but these files do not exist" in ret["comment"]
    assert conf.read_text() == PACKAGED
