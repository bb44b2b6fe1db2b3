"""Typed settings of every program: one dataclass per concern, one per program built from them.

The command lines (`clip_cir.params`) and the Python API build these from the same flat option
names (`Stage1Config.from_options({"dataset": "cirr", "lr": 1e-5, ...})`, the names `config.json`
records), and the library below the programs takes them instead of parsed command lines. Each
default lives here, once: the parsers read their defaults from these classes. Importing this
module loads no torch (fast `--help`).
"""

from clip_cir.config.options import (
    CHOICES,
    RESUME_OVERRIDABLE,
    SAVED_BEFORE,
    Options,
    check_resumed_options,
    option_flag,
    portable_config,
    read_run_config,
)
from clip_cir.config.settings import (
    FASHIONIQ_CATEGORIES,
    AttributeDataConfig,
    AttributesConfig,
    CacheConfig,
    CaptionDataConfig,
    CombiningConfig,
    DataConfig,
    DeviceConfig,
    EncodeConfig,
    ModelConfig,
    PretrainConfig,
    QueryDataConfig,
    RankingConfig,
    RunConfig,
    SearchConfig,
    Stage1Config,
    Stage2Config,
    TowerTrainingConfig,
    TowerTrainingProgramConfig,
    TrainingConfig,
    TrainingProgramConfig,
    check_slerp_alpha,
)
from clip_cir.config.zero_shot import (
    ZERO_SHOT_IMAGE_METHODS,
    TextualInversionConfig,
    ZeroShotConfig,
    ZeroShotDataConfig,
)

__all__ = ["CHOICES", "FASHIONIQ_CATEGORIES", "RESUME_OVERRIDABLE", "SAVED_BEFORE", "AttributeDataConfig",
           "AttributesConfig", "CacheConfig", "CaptionDataConfig",
           "CombiningConfig", "DataConfig", "DeviceConfig", "EncodeConfig", "ModelConfig", "Options", "PretrainConfig",
           "QueryDataConfig", "RankingConfig", "RunConfig", "SearchConfig", "Stage1Config", "Stage2Config",
           "TextualInversionConfig", "TowerTrainingConfig", "TowerTrainingProgramConfig", "TrainingConfig",
           "TrainingProgramConfig", "ZERO_SHOT_IMAGE_METHODS", "ZeroShotConfig", "ZeroShotDataConfig",
           "check_resumed_options", "check_slerp_alpha", "option_flag", "portable_config", "read_run_config"]
