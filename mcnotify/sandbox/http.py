"""HTTP front of the sandbox: /v2/token, REST messaging and SOAP Service.asmx, with MC's status codes."""

from __future__ import annotations

import datetime
import json
import re
import socket
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

from mcnotify.sandbox import rules
from mcnotify.sandbox.model import Account, ImportTask

MC_SYSTEM_TIME = datetime.timezone(datetime.timedelta(hours=-6))

DOC = "https://developer.salesforce.com/docs/atlas.en-us.mc-apis.meta/mc-apis/error-handling.htm"
SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
TRIGGERED = re.compile(r"^/messaging/v1/messageDefinitionSends/key:([^/]+)/send$")
MESSAGES = re.compile(r"^/messaging/v1/(email|sms)/messages/?([^/]*)$")
DEFINITIONS = re.compile(r"^/messaging/v1/(email|sms)/definitions/([^/]+)$")


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], account: Account) -> None:
        super().__init__(address, Handler)
        self.account = account

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (timeout, reset) is part of the weather the sandbox simulates, not an error.
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            super().handle_error(request, client_address)

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}/"


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # MC closes keep-alive connections idle for 5 s
    server: SandboxServer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK add ~40 ms a reply.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- plumbing ------------------------------------------------------------------------------------------
    @property
    def account(self) -> Account:
        return self.server.account

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: Any,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        data = (
            body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.account.requests.append((self.command, self.path, status))

    def _error(self, status: int, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, {"message": message, "errorcode": code, "documentation": DOC}, headers=headers)

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if self.account.token_valid(token):
            return True
        self._error(401, 0, "Not Authorized")
        return False

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        body = self._body() if method == "POST" else b""
        if path.startswith("/_sandbox/"):
            self._control(path, body)
            return
        if self.account.settings.latency:
            time.sleep(self.account.settings.latency)
        fault = self.account.take_fault(path)
        if fault == "reset":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "expire-token":
            self.account.expire_tokens()
        if fault == "429":
            self._error(429, 50100, "Rate limit exceeded", {"Retry-After": "1"})
            return
        if fault in ("500", "503"):
            self._error(
                int(fault),
                50300 if fault == "503" else 30000,
                "Service Unavailable" if fault == "503" else "Internal Server Error",
                {"Retry-After": "1"} if fault == "503" else None,
            )
            return
        if fault == "html":
            self._send(502, "<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
            return
        if fault == "slow":
            time.sleep(self.account.settings.slow_seconds)
        swallow = fault in ("accepted-then-500", "truncated")
        if swallow:
            self._send = self._swallowing_send  # type: ignore[method-assign]
        self._route(method, path, body)
        if not swallow:
            return
        del self._send
        if fault == "accepted-then-500":
            self._error(500, 30000, "Internal Server Error")
            return
        # MC acted on it, but the reply breaks off half-way.
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "400")
        self.end_headers()
        self.wfile.write(b'{"requestId": "tru')
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def _swallowing_send(
        self,
        status: int,
        body: Any,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """The request was processed, but the answer is lost: the client sees a 500."""

    def _route(self, method: str, path: str, body: bytes) -> None:
        if path == "/v2/token" and method == "POST":
            self._token(body)
        elif path.lower() == "/service.asmx" and method == "POST":
            self._soap(body)
        elif (m := TRIGGERED.match(path)) and method == "POST":
            if self._authorized():
                self._triggered(unquote(m.group(1)), body)
        elif (m := DEFINITIONS.match(path)) and method == "GET":
            if self._authorized():
                self._definition(m.group(1), unquote(m.group(2)))
        elif m := MESSAGES.match(path):
            if not self._authorized():
                return
            channel, key = m.group(1), unquote(m.group(2))
            if method == "POST":
                self._transactional(channel, body, key or None)
            else:
                self._status(channel, key)
        else:
            self._error(404, 30003, f"Not found: {method} {path}")

    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body or b"null")
        except ValueError:
            return None

    # -- control (sandbox only) ----------------------------------------------------------------------------
    def _control(self, path: str, body: bytes) -> None:
        if path == "/_sandbox/record":
            self._send(200, self.account.snapshot())
        elif path == "/_sandbox/fault":
            spec = self._json(body) or {}
            self.account.inject(spec.get("kind", "500"), int(spec.get("times", 1)), spec.get("path_prefix", "/"))
            self._send(200, {"ok": True})
        elif path == "/_sandbox/expire-tokens":
            self.account.expire_tokens()
            self._send(200, {"ok": True})
        else:
            self._send(404, {"message": "unknown control"})

    # -- auth ----------------------------------------------------------------------------------------------
    def _token(self, body: bytes) -> None:
        data = self._json(body)
        if not isinstance(data, dict):
            self._send(400, {"error": "invalid_request", "error_description": "Body must be JSON."})
            return
        if data.get("grant_type") != "client_credentials":
            self._send(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": 'Use "client_credentials" as the grant_type.',
                    "error_uri": DOC,
                },
            )
            return
        s = self.account.settings
        if data.get("client_id") != s.client_id or data.get("client_secret") != s.client_secret:
            self._send(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "Invalid client ID. Use the client ID in Marketing Cloud Installed Packages.",
                    "error_uri": DOC,
                },
            )
            return
        token, expires_in = self.account.issue_token()
        base = self.server.base_url
        self._send(
            200,
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": int(expires_in),
                "scope": data.get("scope") or "email_send sms_send list_and_subscribers_write",
                "rest_instance_url": base,
                "soap_instance_url": base,
            },
        )

    # -- transactional messaging ---------------------------------------------------------------------------
    def _transactional(self, channel: str, body: bytes, single_key: str | None) -> None:
        data = self._json(body)
        if not isinstance(data, dict):
            self._error(400, 10000, "MCMS_UTM_Validation: request body is not a JSON object")
            return
        definitions = (
            self.account.settings.email_definitions if channel == "email" else self.account.settings.sms_definitions
        )
        definition = data.get("definitionKey")
        if not definition:
            self._error(400, rules.ERR_MISSING_DEFINITION, "MCMS_UTM_Validation_MissingRequiredField_definitionKey")
            return
        if definition not in definitions:
            self._error(400, rules.ERR_BAD_DEFINITION, "MCMS_UTM_Validation_InvalidValue_definitionKey")
            return
        recipients: Any = data.get("recipients")
        if single_key is not None:
            recipients = [dict(data.get("recipient") or {}, messageKey=single_key)]
        if not isinstance(recipients, list) or not recipients:
            self._error(400, rules.ERR_NO_SUBSCRIBERS, "MCMS_UTM_Validation_NoSubscribers")
            return
        if len(recipients) > rules.MAX_RECIPIENTS:
            self._error(400, rules.ERR_TOO_MANY, "MCMS_UTM_Validation_TooManySubscribers")
            return
        request_id = str(uuid.uuid4())
        responses: list[dict[str, Any]] = []
        in_request: set[str] = set()
        shared = data.get("attributes") or {}
        for r in recipients:
            r = r if isinstance(r, dict) else {}
            key = r.get("messageKey") or str(uuid.uuid4())
            error = self._recipient_error(channel, r, key, in_request)
            in_request.add(key)
            if error:
                responses.append({"messageKey": key, "errorcode": error[0], "message": error[1]})
                continue
            self.account.accept(
                {
                    "channel": channel,
                    "api": "transactional",
                    "messageKey": key,
                    "definitionKey": definition,
                    "contactKey": r["contactKey"],
                    "to": r["to"],
                    "attributes": {**shared, **(r.get("attributes") or {})},
                    "requestId": request_id,
                }
            )
            responses.append({"messageKey": key})
        self.account.flush_record()
        failed = sum(1 for r in responses if "errorcode" in r)
        if failed and single_key is not None:
            self._error(400, responses[0]["errorcode"], responses[0]["message"])
            return
        reply: dict[str, Any] = {"requestId": request_id, "errorcode": 0, "responses": responses}
        if failed:
            reply["errorcode"] = rules.ERR_RESPONSES_HAVE_ERRORS
            reply["message"] = (
                f"MCMS_UTM_ResponsesHasErrors: {failed} subscribers failed to queue out of {len(responses)}"
            )
        self._send(202, reply)

    def _recipient_error(
        self, channel: str, r: dict[str, Any], key: str, in_request: set[str]
    ) -> tuple[int, str] | None:
        if not isinstance(key, str) or len(key) > rules.MAX_MESSAGE_KEY:
            return rules.ERR_BAD_MESSAGE_KEY, "MCMS_UTM_Validation_InvalidValue_messageKey"
        if key in in_request or self.account.key_used(key):
            return rules.ERR_DUPLICATE_MESSAGE_KEY, "MCMS_UTM_Validation_DuplicateMessageKey"
        contact, to = r.get("contactKey"), r.get("to")
        if not contact:
            return rules.ERR_MISSING_KEY_FIELD, "MCMS_UTM_Validation_MissingRequiredField_subscriberKey"
        if not to:
            return rules.ERR_MISSING_TO, "MCMS_UTM_Validation_MissingRequiredField_to: Invalid subscriber"
        attrs = r.get("attributes") or {}
        if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
            return 10001, "MCMS_UTM_Validation_InvalidDataType: attributes must be strings"
        if channel == "sms":
            problem = rules.sms_to_problem(str(to))
            return (rules.ERR_BAD_TO, f"MCMS_UTM_Validation_InvalidValue_to: {problem}") if problem else None
        if rules.import_email_problem(str(to)):
            return rules.ERR_BAD_TO, "MCMS_UTM_Validation_InvalidValue_to"
        mismatch = self.account.subscriber_problem(str(contact), str(to))
        if mismatch:
            return (
                rules.ERR_BAD_SUBSCRIBER_KEY,
                f"MCMS_UTM_Validation_InvalidValue_subscriberKey: {mismatch[1]}",
            )
        return None

    def _definition(self, channel: str, key: str) -> None:
        known = self.account.settings.email_definitions if channel == "email" else self.account.settings.sms_definitions
        if key not in known:
            self._error(404, 30003, "MCMS_UTM_Runtime_ObjectNotFound")
            return
        self._send(200, {"definitionKey": key, "name": key, "status": "Active"})

    def _status(self, channel: str, key: str) -> None:
        found = [m for m in self.account.snapshot()["accepted"] if m.get("messageKey") == key]
        if not found:
            self._error(404, 30003, "MCMS_UTM_Runtime_ObjectNotFound")
            return
        kind = "EmailSent" if channel == "email" else "SMSSent"
        self._send(
            200,
            {
                "requestId": str(uuid.uuid4()),
                "eventCategoryType": f"TransactionalSendEvents.{kind}",
                "info": {"messageKey": key, "contactKey": found[0]["contactKey"], "to": found[0]["to"]},
            },
        )

    # -- triggered send ------------------------------------------------------------------------------------
    def _triggered(self, definition: str, body: bytes) -> None:
        data = self._json(body)
        rid = str(uuid.uuid4())

        def error(code: int, status: str) -> None:
            self._send(
                202,
                {
                    "requestId": rid,
                    "responses": [
                        {
                            "recipientSendId": rid,
                            "hasErrors": True,
                            "messageErrors": [{"messageErrorCode": code, "messageErrorStatus": status}],
                        }
                    ],
                },
            )

        to = (data or {}).get("To") if isinstance(data, dict) else None
        if not isinstance(to, dict) or not to.get("Address") or not to.get("SubscriberKey"):
            self._send(202, {"recipientSendId": "", "hasErrors": True, "messages": ["InvalidOrMissingToAddress"]})
            return
        if definition not in self.account.settings.triggered_definitions:
            error(18002, "Triggered send definition not found or not active.")
            return
        if rules.import_email_problem(str(to["Address"])) or self.account.subscriber_problem(
            str(to["SubscriberKey"]), str(to["Address"])
        ):
            error(180008, "Unable to queue Triggered Send request. There are no valid subscribers.")
            return
        sender = data.get("From") or {}
        attrs = (to.get("ContactAttributes") or {}).get("SubscriberAttributes") or {}
        self.account.accept(
            {
                "channel": "email",
                "api": "triggered-send",
                "messageKey": None,
                "recipientSendId": rid,
                "definitionKey": definition,
                "contactKey": to["SubscriberKey"],
                "to": to["Address"],
                "fromName": sender.get("Name"),
                "attributes": attrs,
                "requestId": rid,
            }
        )
        self.account.flush_record()
        self._send(
            202,
            {
                "requestId": rid,
                "responses": [{"recipientSendId": rid, "hasErrors": False, "messages": ["Queued"]}],
            },
        )

    # -- SOAP ----------------------------------------------------------------------------------------------
    def _soap_reply(self, inner: str, status: int = 200) -> None:
        text = (
            f'<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="{SOAP_NS}" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soap:Body>'
            f"{inner}</soap:Body></soap:Envelope>"
        )
        self._send(status, text, "text/xml; charset=utf-8")

    def _fault(self, code: str, message: str) -> None:
        self._soap_reply(
            f"<soap:Fault><faultcode>{code}</faultcode><faultstring>{escape(message)}</faultstring></soap:Fault>",
            500,
        )

    def _soap(self, body: bytes) -> None:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            self._fault("soap:Client", "Request is not well-formed XML")
            return
        token = next((el.text for el in root.iter() if _local(el.tag) == "fueloauth"), None)
        if not self.account.token_valid(token):
            # The exact expired-token fault text is UNCONFIRMED (docs/marketing-cloud.md §6); FuelSDK users report this.
            self._fault("q0:Security", "Login Failed")
            return
        ops = [el for el in root.iter() if _local(el.tag) in ("PerformRequestMsg", "RetrieveRequestMsg")]
        if not ops:
            self._fault("soap:Client", "Unsupported operation")
            return
        if _local(ops[0].tag) == "PerformRequestMsg":
            self._perform(ops[0])
        else:
            self._retrieve(ops[0])

    def _perform(self, op: ET.Element) -> None:
        def text(name: str) -> str:
            return next((el.text or "" for el in op.iter() if _local(el.tag) == name), "")

        if text("Action") != "start":
            self._fault("soap:Client", "Only Action=start is supported by the sandbox")
            return
        task = self.account.start_import(text("CustomerKey"))
        ns = 'xmlns="http://exacttarget.com/wsdl/partnerAPI"'
        if task is None:
            self._soap_reply(
                f"<PerformResponseMsg {ns}><Results><Result><StatusCode>Error</StatusCode>"
                "<StatusMessage>ImportDefinition not found</StatusMessage></Result></Results>"
                "<OverallStatus>Error</OverallStatus></PerformResponseMsg>"
            )
            return
        self._soap_reply(
            f"<PerformResponseMsg {ns}><Results><Result><StatusCode>OK</StatusCode>"
            f"<StatusMessage>ImportDefinition started</StatusMessage><Task><StatusCode>OK</StatusCode>"
            f"<ID>{task.id}</ID></Task></Result></Results><OverallStatus>OK</OverallStatus>"
            f"<RequestID>{uuid.uuid4()}</RequestID></PerformResponseMsg>"
        )

    def _retrieve(self, op: ET.Element) -> None:
        def text(name: str) -> str:
            return next((el.text or "" for el in op.iter() if _local(el.tag) == name), "")

        ns = 'xmlns="http://exacttarget.com/wsdl/partnerAPI"'
        prop = text("Property")
        if text("ObjectType") != "ImportResultsSummary" or prop not in ("TaskResultID", "ImportDefinitionCustomerKey"):
            self._soap_reply(
                f"<RetrieveResponseMsg {ns}><OverallStatus>Error: unsupported retrieve"
                "</OverallStatus></RetrieveResponseMsg>"
            )
            return
        if prop == "TaskResultID":
            task = self.account.task_view(text("Value"))
            tasks = [task] if task is not None else []
        else:
            tasks = self.account.runs_of(text("Value"))
        results = "".join(self._summary(task) for task in tasks)
        self._soap_reply(
            f"<RetrieveResponseMsg {ns}><OverallStatus>OK</OverallStatus>"
            f"<RequestID>{uuid.uuid4()}</RequestID>{results}</RetrieveResponseMsg>"
        )

    @staticmethod
    def _summary(task: ImportTask) -> str:
        # MC writes SOAP dates in its system time, Central Standard Time without DST, with no offset.
        start = datetime.datetime.fromtimestamp(task.started_wall, MC_SYSTEM_TIME).replace(tzinfo=None)
        result = (
            f'<Results xsi:type="ImportResultsSummary"><ImportStatus>{task.status}</ImportStatus>'
            f"<TaskResultID>{task.id}</TaskResultID>"
            f"<ImportDefinitionCustomerKey>{escape(task.definition_key)}</ImportDefinitionCustomerKey>"
            f"<StartDate>{start.isoformat(timespec='milliseconds')}</StartDate>"
        )
        if task.status in ("Completed", "Error"):
            result += (
                f"<NumberSuccessful>{task.ok}</NumberSuccessful><NumberErrors>{task.errors}</NumberErrors>"
                f"<NumberDuplicated>{task.duplicates}</NumberDuplicated>"
                f"<TotalRows>{task.total}</TotalRows>"
            )
        return result + "</Results>"
