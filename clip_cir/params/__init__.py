"""Every command-line option, defined once, and what the programs do with their command lines.

The programs (`clip_cir.apps`, `clip_cir.training`) add no option of their own: they get their
parser here. `groups` holds the option groups the programs share and the functions that read
parsed options; `training` the options and checks only the training programs have; `programs`
each program's parser; `resume` parsing with --resume and the entry points' logging and
one-line errors.
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
    add_search_args,
    add_seed_arg,
    add_skip_missing_arg,
    add_split_arg,
    add_transform_args,
    check_positive,
    check_search_args,
    feature_cache,
    image_check,
    load_data,
    load_model,
    num_workers,
    pixel_cache,
    required_option,
    search_index_factory,
    transform_for,
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
from clip_cir.params.resume import (
    RESUME_OVERRIDABLE,
    given_options,
    one_line_errors,
    parse_with_resume,
    portable_config,
    program_main,
    run_main,
    setup_logging,
)
from clip_cir.params.training import (
    add_accum_arg,
    add_training_args,
    check_accum_steps,
    check_training_args,
)

__all__ = [
    "MISSING", "PROGRAMS", "RESUME_OVERRIDABLE", "Program", "add_accum_arg", "add_batch_size_arg", "add_circo_args",
    "add_combiner_arg", "add_combining_args", "add_cpu_arg", "add_data_args", "add_data_root_arg", "add_demo_args",
    "add_encode_args", "add_feature_cache_args", "add_mixed_precision_arg", "add_model_args", "add_num_workers_arg",
    "add_output_arg", "add_output_dir_arg", "add_pixel_cache_args", "add_report_args", "add_search_args",
    "add_seed_arg", "add_skip_missing_arg", "add_split_arg", "add_training_args", "add_transform_args",
    "check_accum_steps", "check_positive", "check_search_args", "check_training_args", "cli_parser", "demo_parser",
    "feature_cache", "given_options", "image_check", "load_data", "load_model", "num_workers", "one_line_errors",
    "parse_with_resume", "pixel_cache", "portable_config", "pretrain_parser", "program_main", "quickstart_parser",
    "report_parser", "required_option", "run_main", "search_index_factory", "setup_logging", "stage1_parser",
    "stage2_parser", "transform_for",
]
