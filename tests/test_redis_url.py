import pytest

from exporter.redis_url import KombuRedisSettings, kombu_redis_settings


@pytest.mark.parametrize(
    ("url", "settings"),
    [
        ("redis://127.0.0.1:6379/0?password=pw",
         KombuRedisSettings("redis://127.0.0.1:6379/0", password="pw")),
        ("redis://app:p%40ss@h/2", KombuRedisSettings("redis://h/2", user="app", password="p@ss")),
        # redis-py's precedence: the user part wins, a db parameter wins over the path.
        ("redis://:a@h:1/3?password=b&username=u&db=5",
         KombuRedisSettings("redis://h:1/5", user="u", password="a")),
        ("redis://[::1]:6380", KombuRedisSettings("redis://[::1]:6380/0")),
        ("redis://h/0?socket_timeout=2.5&client_name=x&protocol=3",
         KombuRedisSettings("redis://h/0", transport_options={"socket_timeout": 2.5,
                                                              "client_name": "x"},
                            ignored=("protocol",))),
        ("rediss://h/0?password=pw",
         KombuRedisSettings("rediss://h/0", password="pw", ssl={"ssl_cert_reqs": "required"})),
        ("rediss://h/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none",
         KombuRedisSettings("rediss://h/0",
                            ssl={"ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "none"})),
    ],
)
def test_kombu_gets_what_redis_py_reads(url: str, settings: KombuRedisSettings) -> None:
    assert kombu_redis_settings(url) == settings


def test_a_bad_parameter_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="socket_timeout"):
        kombu_redis_settings("redis://h/0?socket_timeout=x")
