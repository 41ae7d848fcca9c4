"""SOAP calls for the import: Perform(start) an ImportDefinition and Retrieve its ImportResultsSummary."""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from mcnotify.errors import AuthExpired, McApiError, TransientMcError
from mcnotify.mc.client import McClient  # soap builds on the client; the client knows nothing of SOAP

ENV_OPEN = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
    '<s:Header><fueloauth xmlns="http://exacttarget.com">{token}</fueloauth></s:Header><s:Body>'
)
ENV_CLOSE = "</s:Body></s:Envelope>"
SUMMARY_PROPERTIES = (
    "ImportStatus",
    "NumberSuccessful",
    "NumberErrors",
    "NumberDuplicated",
    "TotalRows",
    "StartDate",
    "EndDate",
)
FINAL_STATUSES = {"Completed", "Error"}
# What finding an import run by its definition needs (all documented ImportResultsSummary properties).
RUN_PROPERTIES = ("TaskResultID", "ImportDefinitionCustomerKey", "ImportStatus", "StartDate")
# MC's SOAP dates without an offset are in MC's system time: Central Standard Time, no DST (UTC-6).
MC_SYSTEM_TIME = datetime.timezone(datetime.timedelta(hours=-6))


@dataclass(frozen=True)
class ImportSummary:
    status: str
    total: int | None
    ok: int | None
    errors: int | None
    duplicates: int | None


@dataclass(frozen=True)
class ImportRun:
    """One run of an import definition, as ImportResultsSummary lists it."""

    task_id: str
    status: str
    started_at: float | None  # Unix time; None when MC gave no StartDate


def mc_time(text: str | None) -> float | None:
    """An MC SOAP dateTime as Unix time: with its offset if it has one, else in MC's system time."""
    if not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=MC_SYSTEM_TIME)
    return value.timestamp()


def envelope(token: str, body: str) -> str:
    return ENV_OPEN.format(token=escape(token)) + body + ENV_CLOSE


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _find_all(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if _local(el.tag) == name]


def _text(root: ET.Element, name: str) -> str | None:
    found = _find_all(root, name)
    return found[0].text if found else None


def _parse(text: str) -> ET.Element:
    try:
        return ET.fromstring(text)
    except ET.ParseError:
        raise McApiError("MC SOAP answered with something that is not XML") from None


def check_fault(status: int, text: str) -> None:
    """Turn a SOAP fault into the right error; faults carry auth expiry and throttling."""
    if "Fault" not in text and status < 400:
        return
    if status == 401:
        raise AuthExpired("MC SOAP answered 401", status)
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        if status == 429 or status >= 500:
            raise TransientMcError(f"MC SOAP answered HTTP {status} (not XML)", status) from None
        raise McApiError(f"MC SOAP answered HTTP {status} (not XML)", status) from None
    faults = _find_all(root, "Fault")
    if not faults:
        if status >= 500:
            raise TransientMcError(f"MC SOAP answered HTTP {status}", status)
        return
    faultcode = (_text(faults[0], "faultcode") or "").lower()
    faultstring = _text(faults[0], "faultstring") or "SOAP fault"
    lowered = faultstring.lower()
    if "rate limited" in lowered or "throttl" in lowered:
        raise TransientMcError(f"MC SOAP throttled: {faultstring}", 429)
    # The exact expired-token fault is UNCONFIRMED; these are the markers FuelSDK users report.
    if faultcode.endswith("security") or "login failed" in lowered or "token" in lowered:
        raise AuthExpired(f"MC SOAP refused the token: {faultstring}", status)
    if status >= 500 and "server" in faultcode:
        raise TransientMcError(f"MC SOAP fault: {faultstring}", status)
    raise McApiError(f"MC SOAP fault: {faultstring}", status)


def start_import(client: McClient, customer_key: str, before_send: Callable[[], None] | None = None) -> str:
    """Start one run of the import definition. Not safe to repeat: a request that may have reached MC raises
    mcnotify.mc.client.OutcomeUnknown instead of being retried (ask `import_runs` what happened). `before_send`
    runs right before the request goes out (the pipeline's fence)."""
    body = (
        '<PerformRequestMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><Action>start</Action>'
        '<Definitions><Definition xsi:type="ImportDefinition">'
        f"<CustomerKey>{escape(customer_key)}</CustomerKey></Definition></Definitions></PerformRequestMsg>"
    )
    reply = client.call(
        "POST",
        "Service.asmx",
        api="soap",
        soap=("Perform", lambda t: envelope(t, body)),
        check=check_fault,
        idempotent=False,
        before_send=before_send,
    )
    root = _parse(reply.body)
    status = _text(root, "StatusCode")
    if status != "OK":
        message = _text(root, "StatusMessage") or _text(root, "OverallStatus") or "no status"
        raise McApiError(f"MC refused to start import definition {customer_key!r}: {message}")
    tasks = _find_all(root, "Task")
    task_id = _text(tasks[0], "ID") if tasks else None
    if not task_id:
        raise McApiError(f"MC started import definition {customer_key!r} but returned no task id")
    return task_id


def import_summary(client: McClient, task_id: str) -> ImportSummary | None:
    """The import's summary, or None while MC has none yet (normal right after the start)."""
    props = "".join(f"<Properties>{p}</Properties>" for p in SUMMARY_PROPERTIES)
    body = (
        '<RetrieveRequestMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><RetrieveRequest>'
        f"<ObjectType>ImportResultsSummary</ObjectType>{props}"
        '<Filter xsi:type="SimpleFilterPart"><Property>TaskResultID</Property>'
        f"<SimpleOperator>equals</SimpleOperator><Value>{escape(task_id)}</Value></Filter>"
        "</RetrieveRequest></RetrieveRequestMsg>"
    )
    reply = client.call(
        "POST", "Service.asmx", api="soap", soap=("Retrieve", lambda t: envelope(t, body)), check=check_fault
    )
    root = _parse(reply.body)
    overall = _text(root, "OverallStatus") or ""
    if overall not in ("OK", "MoreDataAvailable"):
        raise McApiError(f"MC could not retrieve the import summary: {overall or 'no status'}")
    results = _find_all(root, "Results")
    if not results:
        return None

    def number(name: str) -> int | None:
        value = _text(results[0], name)
        try:
            return None if value is None else int(value)
        except ValueError:
            return None

    return ImportSummary(
        status=_text(results[0], "ImportStatus") or "Unknown",
        total=number("TotalRows"),
        ok=number("NumberSuccessful"),
        errors=number("NumberErrors"),
        duplicates=number("NumberDuplicated"),
    )


def import_runs(client: McClient, customer_key: str) -> list[ImportRun]:
    """The runs MC lists for an import definition (Retrieve ImportResultsSummary filtered by
    ImportDefinitionCustomerKey): how to learn whether a start whose reply was lost did start one."""
    props = "".join(f"<Properties>{p}</Properties>" for p in RUN_PROPERTIES)
    body = (
        '<RetrieveRequestMsg xmlns="http://exacttarget.com/wsdl/partnerAPI"><RetrieveRequest>'
        f"<ObjectType>ImportResultsSummary</ObjectType>{props}"
        '<Filter xsi:type="SimpleFilterPart"><Property>ImportDefinitionCustomerKey</Property>'
        f"<SimpleOperator>equals</SimpleOperator><Value>{escape(customer_key)}</Value></Filter>"
        "</RetrieveRequest></RetrieveRequestMsg>"
    )
    reply = client.call(
        "POST", "Service.asmx", api="soap", soap=("Retrieve", lambda t: envelope(t, body)), check=check_fault
    )
    root = _parse(reply.body)
    overall = _text(root, "OverallStatus") or ""
    if overall not in ("OK", "MoreDataAvailable"):
        raise McApiError(f"MC could not list the runs of import definition {customer_key!r}: {overall or 'no status'}")
    runs = []
    for result in _find_all(root, "Results"):
        task_id = _text(result, "TaskResultID")
        key = _text(result, "ImportDefinitionCustomerKey")
        if not task_id or (key is not None and key != customer_key):
            continue
        runs.append(ImportRun(task_id, _text(result, "ImportStatus") or "Unknown", mc_time(_text(result, "StartDate"))))
    return runs
