"""Character sets pydicom gets wrong, corrected once for the whole process.

pydicom 3.0 lists GB 2312 (``ISO 2022 IR 58``) among the encodings "whose escape sequences
Python strips", but Python's ``iso_ir_58`` codec is plain EUC-CN: decoding keeps the
``ESC $ ) A`` designation in the text (``Zhang^XiaoDong=$)A张^$)A小东=``, PS3.5 Annex K's example)
and encoding leaves it out. Taking the encoding off that list makes pydicom strip the escape
sequence when reading and write it when encoding, as it does for the other ISO 2022 sets.

Importing this module applies the correction (:mod:`cxr_service.pipeline` and the writers import
it, so every door reads and writes with it).
"""

from __future__ import annotations

import logging

import pydicom.charset

logger = logging.getLogger(__name__)

GB2312 = "iso_ir_58"


def correct_iso_2022_ir_58() -> bool:
    """Apply the correction; True when it changed pydicom (False: already applied or not needed)."""
    handled = tuple(pydicom.charset.handled_encodings)
    if GB2312 not in handled:
        return False
    pydicom.charset.handled_encodings = tuple(e for e in handled if e != GB2312)
    logger.debug("pydicom: ISO 2022 IR 58 escape sequences are now stripped and written")
    return True


correct_iso_2022_ir_58()
