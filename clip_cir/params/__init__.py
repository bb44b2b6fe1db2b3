"""Every command-line option, defined once, and how a command line becomes typed settings.

The programs (`clip_cir.apps`) add no option of their own: they get their parser here. `groups`
holds the option groups the programs share; `training` the options only the training programs
have; `programs` each program's parser (`zero_shot` that of `clip-cir zero-shot`); `resume`
parsing with --resume; `settings` the `clip_cir.config` settings built from parsed options.
Defaults live in `clip_cir.config`.
"""

from clip_cir.params.groups import (
    MISSING,
    add_batch_size_arg,
    add_circo_args,
    add_combiner_arg,
    add_combining_args,
    add_cpu_arg,
    add_data_args,
    add_data_root_arg,
    add_encode_args,
    add_feature_cache_args,
    add_mixed_precision_arg,
    add_model_args,
    add_num_workers_arg,
    add_output_arg,
    add_output_dir_arg,
    add_pixel_cache_args,
    add_reader_option_args,
    add_search_args,
    add_seed_arg,
    add_skip_missing_arg,
    add_split_arg,
    add_transform_args,
    check_positive,
    required_option,
)
from clip_cir.params.programs import (
    PROGRAMS,
    Program,
    add_demo_args,
    add_report_args,
    cli_parser,
    demo_parser,
    pretrain_parser,
    quickstart_parser,
    report_parser,
    stage1_parser,
    stage2_parser,
)
from clip_cir.params.resume import ParserBuilder, given_options, parse_with_resume
from clip_cir.params.settings import data_settings, program_settings, ranking_settings
from clip_cir.params.training import add_accum_arg, add_training_args
from clip_cir.params.zero_shot import zero_shot_parser

__all__ = [
    "MISSING",
    "PROGRAMS",
    "ParserBuilder",
    "Program",
    "add_accum_arg",
    "add_batch_size_arg",
    "add_circo_args",
    "add_combiner_arg",
    "add_combining_args",
    "add_cpu_arg",
    "add_data_args",
    "add_data_root_arg",
    "add_demo_args",
    "add_encode_args",
    "add_feature_cache_args",
    "add_mixed_precision_arg",
    "add_model_args",
    "add_num_workers_arg",
    "add_output_arg",
    "add_output_dir_arg",
    "add_pixel_cache_args",
    "add_reader_option_args",
    "add_report_args",
    "add_search_args",
    "add_seed_arg",
    "add_skip_missing_arg",
    "add_split_arg",
    "add_training_args",
    "add_transform_args",
    "check_positive",
    "data_settings",
    "cli_parser",
    "demo_parser",
    "given_options",
    "parse_with_resume",
    "pretrain_parser",
    "program_settings",
    "quickstart_parser",
    "ranking_settings",
    "report_parser",
    "required_option",
    "stage1_parser",
    "stage2_parser",
    "zero_shot_parser",
]
