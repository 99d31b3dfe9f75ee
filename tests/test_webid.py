import uuid
from pathlib import Path

import pytest

from pi_stream_source import webid

SAMPLES = Path(__file__).resolve().parent / "data" / "pi_samples"   # copied from shared/pi-web-api/samples (see SOURCES.md)


def test_published_path_only_example():
    assert webid.path_only(r"\\PISRV1\SINUSOID") == "P1DPUElTUlYxXFNJTlVTT0lE"
    assert webid.path_only(r"PISRV1\sinusoid") == "P1DPUElTUlYxXFNJTlVTT0lE"   # names are upper-cased


def test_decode_real_full_point_webids():
    info = webid.decode("F1DPtNdEETiNm02M4FYFgorKtQQwAAAARUMyQU1BWi01QjFCNFJMXFBVTVBJTkdTSVRFMDEuUFVNUElOR1NUQVRJT04wMS5QVU1QMDcuRkxPV01FU0FVUkVNRU5U")
    assert info.type == "Full" and info.marker == "DP"
    assert str(info.server_guid).startswith("1144d7b4")
    assert info.point_id == 67
    assert info.path == r"\\EC2AMAZ-5B1B4RL\PUMPINGSITE01.PUMPINGSTATION01.PUMP07.FLOWMESAUREMENT"
    info = webid.decode("F1DPXo6Tq7dbDESaFakUUXB--wRQcAAAUElTUlZUXEFGU0RLV1NfU0lOVVNPSUQ")
    assert (info.point_id, info.path) == (1861, r"\\PISRVT\AFSDKWS_SINUSOID")


def test_full_point_round_trip():
    guid = uuid.UUID("1144d7b4-8d38-4d9b-8ce0-5605828acab5")
    w = webid.full_point(guid, 67, r"\\EC2AMAZ-5B1B4RL\PumpingSite01.PumpingStation01.Pump07.FlowMesaurement")
    assert w == "F1DPtNdEETiNm02M4FYFgorKtQQwAAAARUMyQU1BWi01QjFCNFJMXFBVTVBJTkdTSVRFMDEuUFVNUElOR1NUQVRJT04wMS5QVU1QMDcuRkxPV01FU0FVUkVNRU5U"
    assert webid.decode(w).server_guid == guid


def test_dataserver_sample():
    info = webid.decode("F1DStNdEETiNm02M4FYFgorKtQRUMyQU1BWi01QjFCNFJM")
    assert info.marker == "DS" and info.path == r"\\EC2AMAZ-5B1B4RL"


@pytest.mark.parametrize("bad", ["", "X1DPabc", "F2DPabc", "F1", "F1DP!!!"])
def test_decode_rejects_non_webids(bad):
    with pytest.raises(ValueError):
        webid.decode(bad)
