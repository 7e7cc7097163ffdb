"""The error types every bertprep module raises for bad input; the bottom of the import graph.

A `BertprepError` is a problem with the user's input or settings: the CLI prints its message as
one line and exits 2. Any other exception is a bug and keeps its traceback.
"""


class BertprepError(Exception):
    """Base of every error caused by input, files or settings (not by a bug)."""


class InputError(BertprepError):
    """An input file is missing, unreadable, empty or not what it claims to be."""


class ConfigError(BertprepError):
    """An option is out of range or inconsistent with another; the message names the flag."""


class ShardFormatError(BertprepError):
    """A token store, shard or manifest does not follow the format (or is of another version)."""


class ChecksumError(ShardFormatError):
    """A file's bytes differ from the checksum its manifest recorded."""


class OutputError(BertprepError):
    """The output cannot be written: a full disk, a read-only or forbidden output directory."""


class ClusterError(BertprepError):
    """The cluster named by --cluster cannot do the work: no scheduler answers, it has no workers, a
    worker cannot see the input or output paths, or runs other versions, or tasks keep killing workers."""
