"""The canary's pure parts: the judge's verdicts at their edges, the steps and durations
users type, the nginx canary site (accepted by a real `nginx -t`) and its log, HAProxy's
runtime commands and counters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from bluegreen.config import Colour, parse_config
from bluegreen.demo.nginx import nginx_binary
from bluegreen.plan import haproxy, nginx
from bluegreen.traffic import Sample, Traffic, judge
from bluegreen.values import percent_steps, seconds
from test_plan import CFG

LIMITS = {"max_error_rate": 0.01, "max_latency_ratio": 2.0, "min_requests": 100}


def sample(requests: int, errors: int = 0, time: float = 0.02) -> Sample:
    return Sample(requests, errors, [time] * requests)


@pytest.mark.parametrize("old, new, good, says", [
    (sample(900), sample(100), True, "new 0/100 failed"),
    (sample(900), sample(100, 1), True, ""),  # 1 % is not more than 0 % + 1 %
    (sample(900), sample(100, 2), False, "error rate 2.0% is more than 1.0%"),
    (sample(900, 18), sample(100, 2), True, ""),  # 2 % vs 2 %: the release is not worse
    (sample(900), sample(20, 2), False, "2 failed requests already"),  # > 1.5: early
    (sample(900), sample(20, 1), None, "20 of the 100 requests"),  # one may be noise
    (sample(900), sample(99), None, "99 of the 100"),
    (sample(900, time=0.02), sample(100, time=0.05), False, "p99 50 ms is more than 2 x"),
    (sample(900, time=0.02), sample(100, time=0.04), True, ""),
    (sample(900, time=0.001), sample(100, time=0.015), True, ""),  # under the 10 ms floor
    (sample(900, time=0.001), sample(100, time=0.025), False, "p99 25 ms"),
])
def test_judge(old: Sample, new: Sample, good: bool | None, says: str) -> None:
    verdict = judge(old, new, **LIMITS)
    assert verdict.good is good
    assert says in verdict.reason


def test_judge_after_a_full_switch_uses_the_baseline() -> None:
    """A watch: the old colour served nothing; latency against the last step's p99."""
    assert judge(Sample(), sample(200, time=0.09), **LIMITS, baseline_p99=0.03).good is False
    assert judge(Sample(), sample(200, time=0.05), **LIMITS, baseline_p99=0.03).good is True
    assert judge(Sample(), sample(200, time=0.09), **LIMITS).good is True  # nothing to compare
    assert judge(Sample(), Sample(), **{**LIMITS, "min_requests": 0}).good is True


def test_p99_is_the_nearest_rank() -> None:
    assert Sample(100, 0, [i / 1000 for i in range(1, 101)]).p99 == 0.099
    assert Sample(1, 0, [0.5]).p99 == 0.5
    assert Sample().p99 is None


def test_traffic_values() -> None:
    t = Traffic(Colour.GREEN, 10)
    assert t.new is Colour.BLUE and t.shares == {"blue": 10, "green": 90}
    assert t.text() == "blue=10 green=90"
    assert Traffic.parse("blue=10 green=90", Colour.GREEN) == t
    assert Traffic.parse("green", Colour.GREEN) is None


@pytest.mark.parametrize("text, steps", [("10,50,100", (10, 50, 100)), ("5, 25", (5, 25, 100)),
                                          ("100", (100,)), ("10%,50%", (10, 50, 100))])
def test_steps(text: str, steps: tuple[int, ...]) -> None:
    assert percent_steps(text) == steps


@pytest.mark.parametrize("text", ["", "50,10", "0,50", "10,10", "150", "ten"])
def test_bad_steps(text: str) -> None:
    with pytest.raises(ValueError):
        percent_steps(text)


def test_durations() -> None:
    assert [seconds(v) for v in ("30s", "2m", "1h", "1.5s", "90", "250ms", 5)] == [
        30, 120, 3600, 1.5, 90, 0.25, 5]
    for bad in ("0s", "-1s", "soon", "2d", "25h"):
        with pytest.raises(ValueError):
            seconds(bad)


def test_canary_site_is_accepted_by_nginx(tmp_path: Path) -> None:
    """Both colours' upstreams, split_clients by the cookie's key (sticky) or the request
    id, the JSON log; a real `nginx -t` accepts it."""
    log = PurePosixPath(tmp_path / "traffic.log")
    sticky = nginx.render_site(CFG, Colour.BLUE, traffic=Traffic(Colour.BLUE, 10), log=log)
    assert "split_clients \"$bluegreen_shop_colour_key\" $bluegreen_shop_colour {" in sticky
    assert "    10% green;\n    * blue;" in sticky
    assert "proxy_pass http://bluegreen_shop_$bluegreen_shop_colour;" in sticky
    assert 'return 200 "blue=90 green=10";' in sticky
    assert f"access_log {log} bluegreen_shop_json;" in sticky
    assert "add_header Set-Cookie $bluegreen_shop_colour_set_cookie always;" in sticky
    assert nginx.parse_traffic(sticky, Colour.BLUE) == Traffic(Colour.BLUE, 10)
    plain = nginx.render_site(CFG, Colour.GREEN, traffic=Traffic(Colour.GREEN, 100, False),
                              log=log)
    assert 'split_clients "$request_id"' in plain and "    * blue;\n}" in plain
    assert "Set-Cookie" not in plain
    assert nginx.parse_traffic(plain, Colour.GREEN) == Traffic(Colour.GREEN, 100, False)
    assert nginx.parse_traffic(nginx.render_site(CFG, Colour.BLUE), Colour.BLUE) is None
    assert nginx.canary_file(CFG, Colour.BLUE) == PurePosixPath(
        "/etc/nginx/sites-available/shop-blue-canary")
    assert nginx.colour_of_target(CFG, "/etc/nginx/sites-available/shop-blue-canary") \
        is Colour.BLUE
    assert nginx.canary_of_target(CFG, "shop-blue-canary")
    assert not nginx.canary_of_target(CFG, "shop-blue")
    for i, site in enumerate((sticky, plain)):
        conf = tmp_path / f"nginx{i}.conf"
        conf.write_text(f"pid {tmp_path}/nginx{i}.pid;\nerror_log {tmp_path}/error{i}.log;\n"
                        f"events {{}}\nhttp {{\naccess_log off;\n{site}\n}}\n")
        test = subprocess.run([nginx_binary(), "-t", "-q", "-p", str(tmp_path), "-c",
                               str(conf)], capture_output=True, text=True)
        assert test.returncode == 0, test.stderr


def test_parse_log() -> None:
    lines = [{"msec": 1.0, "colour": "green", "status": 500, "upstream_time": "0.004",
              "request_time": 0.005},
             {"msec": 1.1, "colour": "green", "status": 200, "upstream_time": "0.002, 0.003",
              "request_time": 0.006},
             {"msec": 1.2, "colour": "blue", "status": 502, "upstream_time": "",
              "request_time": 0.001},
             {"msec": 1.3, "colour": "blue", "status": 200, "upstream_time": "0.010",
              "request_time": 0.011}]
    text = "\n".join(json.dumps(line) for line in lines) + "\nnot json\n{\"colour\": 1}\n"
    seen = nginx.parse_log(text)
    assert (seen[Colour.GREEN].requests, seen[Colour.GREEN].errors) == (2, 1)
    assert seen[Colour.GREEN].times == [0.004, 0.005]
    assert (seen[Colour.BLUE].requests, seen[Colour.BLUE].errors) == (2, 1)
    assert seen[Colour.BLUE].times == [0.001, 0.010]


def test_haproxy_canary_commands_and_counters() -> None:
    cfg = parse_config({"app": "shop", "run": {"command": "x"},
                        "proxy": {"kind": "haproxy", "server_name": "shop.test"},
                        "hosts": [{"address": "local", "deploy_to": "/srv"}]}, Path("/tmp"))
    t = Traffic(Colour.BLUE, 10)
    assert haproxy.canary_value(t) == "canary-green"
    assert haproxy.canary_of_value("canary-green") == (Colour.GREEN, True)
    assert haproxy.canary_of_value("split-blue") == (Colour.BLUE, False)
    assert haproxy.canary_of_value("green") is None
    assert haproxy.set_weights(cfg, t, ["web 1"]) == (
        "set weight bluegreen_shop_canary-green/blue-web_1 90; "
        "set weight bluegreen_shop_canary-green/green-web_1 10")
    config = haproxy.render_config(cfg, [("web 1", "127.0.0.1")])
    assert "backend bluegreen_shop_canary-green" in config
    assert "cookie bluegreen_shop insert indirect nocache httponly" in config
    assert "server green-web_1 127.0.0.1:5000 weight 0 cookie green-web_1" in config
    assert "backend bluegreen_shop_split-blue" in config
    stat = haproxy.parse_stat(
        "# pxname,svname,scur,stot,hrsp_5xx,econ,eresp,rtime,weight,\n"
        "bluegreen_shop_canary-green,blue-web_1,0,90,0,0,0,12,90,\n"
        "bluegreen_shop_canary-green,green-web_1,0,10,2,1,0,30,10,\n"
        "bluegreen_shop_canary-green,BACKEND,0,100,2,1,0,14,100,\n"
        "bluegreen_shop_blue,web_1,3,500,0,0,0,11,1,\n"
        "other_app_blue,web_1,0,7,7,0,0,1,1,\n")
    assert haproxy.canary_weights(stat, cfg, t) == {"blue": 90, "green": 10}
    counters = haproxy.colour_counters(stat, cfg)
    assert counters[("bluegreen_shop_canary-green", "green-web_1")] == (
        Colour.GREEN, {"stot": 10, "hrsp_5xx": 2, "econ": 1, "eresp": 0}, 0.03)
    assert counters[("bluegreen_shop_blue", "web_1")][0] is Colour.BLUE
    assert len(counters) == 3  # not the BACKEND row, not another app's
    assert haproxy.sessions(stat, cfg, Colour.BLUE, "web 1") == 3
