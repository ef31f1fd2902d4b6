"""What an operator sees when the configuration is wrong, through real Envoy: a cluster name Envoy
does not have, and an invalid ECDS file at startup."""
import harness
from test_reload import ecds_bootstrap, plugin, publish

FILE_ACCESS_LOG = "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog"


def hcm(config):
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def log_to_file(config, path):
    """envoy/envoy.yaml's access log, with its format, written to `path` instead of stdout."""
    (entry,) = hcm(config)["access_log"]
    entry["name"] = "envoy.access_loggers.file"
    entry["typed_config"]["@type"] = FILE_ACCESS_LOG
    entry["typed_config"]["path"] = str(path)
    return config


def test_a_cluster_envoy_does_not_have_is_answered_503_and_logged_with_flag_nc(wasm, tmp_path):
    misspelt = {"services": [{"name": "svc", "upstreams": [
        {"name": "v1", "cluster": "reviews_v1", "weight": 0},
        {"name": "v2", "cluster": "reveiws_v2", "weight": 1}]}]}
    access_log = tmp_path / "access.log"
    with harness.upstreams("reviews_v1") as ports:
        config = log_to_file(harness.bootstrap(misspelt, ports, harness.free_port(), harness.free_port()),
                             access_log)
        with harness.Envoy(config, tmp_path) as envoy:
            client = harness.Client(envoy.port)
            try:
                status, _, _ = client.get("/", {"Host": "svc"})
            finally:
                client.close()
            assert status == 503
            assert harness.wait_for(lambda: access_log.exists() and access_log.read_text().strip())
            (line,) = access_log.read_text().splitlines()
            assert " 503 NC " in line and "cluster=reveiws_v2" in line, line
            assert envoy.stats("http.meshsplit.no_cluster")["http.meshsplit.no_cluster"] == 1


def test_envoy_restarted_with_an_invalid_ecds_file_starts_on_default_config(wasm, tmp_path):
    ecds = tmp_path / "ecds"
    ecds.mkdir()
    default = plugin({"a": 1, "b": 0})
    with harness.upstreams("a", "b") as ports:
        config = ecds_bootstrap(ecds, ports, default)
        publish(ecds, 2, plugin({"a": 0, "b": 1}))
        with harness.Envoy(config, tmp_path) as envoy:
            assert harness.send(envoy.port, 20, {"Host": "svc"}) == {"b": 20}

        # Version 3 is invalid. After a restart Envoy does not remember version 2: it serves
        # default_config and rejects the file.
        publish(ecds, 3, plugin({"a": 5000000, "b": 1}))
        with harness.Envoy(config, tmp_path) as envoy:
            assert harness.send(envoy.port, 20, {"Host": "svc"}) == {"a": 20}
            stats = envoy.stats("extension_config_discovery.http_filter.meshsplit.")
            assert stats["extension_config_discovery.http_filter.meshsplit.update_rejected"] == 1
            assert "must be at most 1000000, got 5000000" in envoy.log()
