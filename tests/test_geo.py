import numpy as np
import pytest

from prismn import geo


def test_haversine_known_distances():
    assert geo.haversine_km(48.8566, 2.3522, 51.5074, -0.1278) == pytest.approx(343.5, abs=1.0)  # Paris-London
    assert geo.haversine_km(40.7128, -74.0060, 35.6762, 139.6503) == pytest.approx(10850, rel=0.01)  # NY-Tokyo
    assert geo.haversine_km(0, 0, 0, 180) == pytest.approx(np.pi * geo.EARTH_RADIUS_KM)


def test_haversine_matrix_matches_scalar():
    lat = np.array([59.91, 48.86, -23.55])
    lon = np.array([10.75, 2.35, -46.63])
    m = geo.haversine_matrix_km(lat, lon, lat, lon)
    assert m[0, 2] == pytest.approx(geo.haversine_km(59.91, 10.75, -23.55, -46.63))
    assert np.allclose(np.diag(m), 0)


def test_rtt_estimate_from_distance():
    # 2 * 1.9 * 1000 km / 204 km/ms + 3 ms
    assert geo.estimate_rtt_ms(1000.0) == pytest.approx(21.63, abs=0.01)
    assert geo.estimate_rtt_ms(0.0) == geo.FIXED_MS


def test_measured_rtt_wins_over_estimate(swarm_factory):
    peers = [{"id": "oslo-1", "lat": 59.91, "lon": 10.75, "free_vram_gb": 8},
             {"id": "paris-1", "lat": 48.86, "lon": 2.35, "free_vram_gb": 8}]
    est = swarm_factory(peers)
    assert est.rtt_ms("oslo-1", "paris-1") == pytest.approx(geo.estimate_rtt_ms(geo.haversine_km(59.91, 10.75, 48.86, 2.35)))
    meas = swarm_factory(peers, rtt_ms={"oslo-1": {"paris-1": 31.0}})
    assert meas.rtt_ms("paris-1", "oslo-1") == 31.0  # symmetric
    assert meas.rtt_source("oslo-1", "paris-1") == "measured"
    assert meas.rtt_matrix_ms[0, 1] == 31.0


def test_locate_resolves_zone_or_country():
    assert geo.locate(59.91, 10.75).zone == "NO-NO1"  # Oslo
    assert geo.locate(48.86, 2.35).zone == "FR"
    far = geo.locate(46.0, 2.0)  # rural France, far from any listed city
    assert (far.zone or far.country) == "FR"
    assert geo.locate(0.0, -140.0).country is None  # the Pacific
