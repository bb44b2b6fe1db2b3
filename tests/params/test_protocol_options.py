"""`--fashioniq-protocol` and `--shoes-protocol`: from a command line to the readers' options."""

from __future__ import annotations

import pytest

from clip_cir import params
from clip_cir.config import DataConfig, Stage1Config
from clip_cir.data.registry import reader_options
from clip_cir.errors import CIRError


def test_protocol_options_reach_the_readers():
    args = params.cli_parser().parse_args(["eval", "--dataset", "shoes", "--data-root", "DATA",
                                           "--shoes-protocol", "artemis", "--fashioniq-protocol", "cosmo-val"])
    data = params.ranking_settings(args).data
    assert (data.shoes_protocol, data.fashioniq_protocol) == ("artemis", "cosmo-val")
    options = reader_options(data)
    assert (options.shoes_protocol, options.fashioniq_protocol) == ("artemis", "cosmo-val")
    # Defaults: VAL's Shoes protocol (the published numbers' one), CLIP4Cir's FashionIQ protocol.
    defaults = reader_options(DataConfig(dataset="shoes", data_root="DATA"))
    assert (defaults.shoes_protocol, defaults.fashioniq_protocol) == ("val", "clip4cir")
    stage1 = params.program_settings(Stage1Config, params.stage1_parser().parse_args(
        ["--dataset", "fashioniq", "--data-root", "DATA", "--fashioniq-protocol", "val"]))
    assert stage1.data.fashioniq_protocol == "val"


def test_an_unknown_protocol_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        params.cli_parser().parse_args(["eval", "--dataset", "shoes", "--data-root", "D", "--shoes-protocol", "x"])
    assert "invalid choice: 'x' (choose from val, artemis)" in capsys.readouterr().err.replace("'val', 'artemis'",
                                                                                             "val, artemis")
    with pytest.raises(CIRError, match="--shoes-protocol takes a string"):
        DataConfig.from_options({"shoes_protocol": 3})
