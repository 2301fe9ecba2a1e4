"""Contacts a source gives (a case's investigating agency): untrusted text, validated.

A phone number is kept only if it normalises to a valid E.164 number that can take an
SMS: Google's numbering plan (``phonenumbers``) refuses short codes, unassigned ranges,
premium-rate and toll-free lines and numbers with an extension. An e-mail address is
kept only if it is a plain ``local@domain`` address (``email-validator``): no display
name, quoting, IP literal, whitespace or header-injection characters. Anything else is
refused (None), never repaired.
"""

from __future__ import annotations

import phonenumbers
from email_validator import EmailNotValidError, validate_email

# Numbers an SMS can reach. Where the plan cannot tell a landline from a mobile (the
# North American plan), FIXED_LINE_OR_MOBILE is all it says; a landline that is not
# SMS-capable is refused by SNS at send time, not here.
TEXTABLE = frozenset({phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE})
MAX_RAW_LENGTH = 40  # longer is not a phone number someone typed into a case form


def phone_e164(raw: object, region: str) -> str | None:
    """``raw`` as an E.164 number (``+13407725605``) if it is a valid, textable number
    (national numbers read as ``region``, e.g. "US"), else None."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > MAX_RAW_LENGTH or not raw.isprintable():
        return None
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    if number.extension or not phonenumbers.is_valid_number(number):
        return None
    if phonenumbers.number_type(number) not in TEXTABLE:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_address(raw: object) -> str | None:
    """``raw`` as a normalised plain ASCII e-mail address (an internationalised domain in
    its IDNA form), else None."""
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 254:
        return None
    try:
        checked = validate_email(
            raw.strip(),
            check_deliverability=False,  # no DNS: ingest and alerts run offline from mail servers
            allow_smtputf8=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailNotValidError:
        return None
    return checked.ascii_email or None
