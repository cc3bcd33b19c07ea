"""The one exception users see: a problem they caused and can fix.

The CLI prints it as a single line without a traceback. Bugs raise ordinary exceptions.
"""


class VlmprefError(Exception):
    """A user-caused problem (bad path, bad flag, missing column, too little memory).

    The message is one sentence that names the problem and the fix.
    """
