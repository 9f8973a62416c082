"""The ISO 3166-1 alpha-2 country codes, so policies can reject a typo like "UK" at write time.

Stdlib only. The set holds the 249 officially assigned codes (the same list tzdata ships as
``iso3166.tab``). User-assigned codes are left out on purpose, including ``XK``: Kosovo's code is used by
the European Commission and some GeoIP vendors, but ISO has not assigned it, so a policy naming it would
silently depend on one vendor's convention. Exceptionally or transitionally reserved codes (``UK``,
``EU``, ``AN``...) are not assigned either and are rejected for the same reason.
"""

from __future__ import annotations

__all__ = ["ISO_3166_ALPHA2", "is_country"]

ISO_3166_ALPHA2: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ
    BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ
    CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ
    DE DJ DK DM DO DZ
    EC EE EG EH ER ES ET
    FI FJ FK FM FO FR
    GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY
    HK HM HN HR HT HU
    ID IE IL IM IN IO IQ IR IS IT
    JE JM JO JP
    KE KG KH KI KM KN KP KR KW KY KZ
    LA LB LC LI LK LR LS LT LU LV LY
    MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
    NA NC NE NF NG NI NL NO NP NR NU NZ
    OM
    PA PE PF PG PH PK PL PM PN PR PS PT PW PY
    QA
    RE RO RS RU RW
    SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ
    TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ
    UA UG UM US UY UZ
    VA VC VE VG VI VN VU
    WF WS
    YE YT
    ZA ZM ZW
    """.split()  # noqa: SIM905 - a grid of codes is easier to check than 249 quoted strings
)


def is_country(code: str) -> bool:
    """True when ``code`` is an assigned alpha-2 code. Case-sensitive: policies store upper case."""
    return code in ISO_3166_ALPHA2
