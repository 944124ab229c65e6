"""Independent check of the push.v1 wire contract, for tests/it/contract.rs.

Google's own protobuf runtime for Python (not the Rust code under test) reads
what push-dispatch published. Descriptors are built from proto/push/v1/push.proto
by protoc (grpcio-tools' `grpc_tools.protoc`), so the check follows the .proto
file, not the Rust types generated from it.

    python3 contract.py feedback MESSAGES.jsonl
        Each line: {"data_hex": "<body as hex>", "attributes": {...}}, one Pub/Sub
        message of the feedback topic. JSON bodies must parse with
        json_format.Parse(ignore_unknown_fields=False), carry enum values as
        names, timestamps as RFC 3339 in UTC ("Z") and lowerCamelCase field
        names; binary bodies (attribute content-type: application/x-protobuf)
        must parse with ParseFromString and leave no unknown field. The
        attributes must be those documented, consistent with the body. Every
        field of TokenInvalidated must appear in at least one event.
        Prints a JSON list, one entry per message:
        {"json": <MessageToJson as an object>, "binary_hex": <SerializeToString>}.

    python3 contract.py results MESSAGES.jsonl
        Likewise for the results topic: each body a PushResult (JSON
        canonical, or binary), with the attributes event_type, app, outcome
        (delivered | partial | failed, from its targets), request_id,
        complete and content-type consistent with the body. Prints the same
        JSON list.

    python3 contract.py docs FILE.md...
        Every ```json block right after a line `<!-- contract: push.v1.NAME -->`
        must be a valid NAME under the same JSON rules (TokenInvalidated also
        in the canonical form the worker writes). Prints how many were
        checked per message type.

Exit status 0 when everything holds; 1 with the reasons on stderr otherwise.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
from importlib import resources

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf import unknown_fields

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_DIR = os.path.join(ROOT, "proto")
PROTO_FILE = "push/v1/push.proto"

# RFC 3339 as the proto3 JSON mapping writes it: UTC, "Z", 0 to 9 fraction digits.
RFC3339_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")

# Attributes of a feedback event (docs/feedback.md). Trace context may be added.
REQUIRED_ATTRIBUTES = {"event_type", "platform", "app", "reason", "content-type"}
OPTIONAL_ATTRIBUTES = {"traceparent", "tracestate"}
PLATFORM_ATTRIBUTE = {"PLATFORM_APNS": "apns", "PLATFORM_FCM": "fcm"}
CONTENT_TYPES = {"json": "application/json", "binary": "application/x-protobuf"}


# Attributes of a PushResult (docs/producers.md).
RESULT_ATTRIBUTES = {"event_type", "app", "outcome", "request_id", "complete", "content-type"}


class ContractError(Exception):
    pass


def build_pool():
    """Runs protoc on push.proto and loads the descriptors into a fresh pool."""
    wkt = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "push.binpb")
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{PROTO_DIR}", f"-I{wkt}", "--include_imports",
            f"--descriptor_set_out={out}", PROTO_FILE,
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise ContractError(f"protoc failed on {PROTO_FILE}: {run.stderr.strip()}")
        fds = descriptor_pb2.FileDescriptorSet()
        with open(out, "rb") as f:
            fds.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in fds.file:
        pool.Add(file)
    return pool


def message_class(pool, name):
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def check_json_shape(desc, value, path):
    """The rules json_format.Parse does not enforce on its own: field names as
    json_name, enum values as names, timestamps as RFC 3339 in UTC."""
    problems = []
    if not isinstance(value, dict):
        return [f"{path}: expected a JSON object, got {type(value).__name__}"]
    by_json = {f.json_name: f for f in desc.fields}
    for key, item in value.items():
        field = by_json.get(key)
        if field is None:
            other = desc.fields_by_name.get(key)
            hint = f" (the proto name; write {other.json_name!r})" if other else ""
            problems.append(f"{path}.{key}: not a field of {desc.full_name}{hint}")
            continue
        where = f"{path}.{key}"
        repeated = field.is_repeated
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue  # map<string, string>: checked by json_format
        items = item if repeated and isinstance(item, list) else [item]
        for i, one in enumerate(items):
            at = f"{where}[{i}]" if repeated else where
            if field.enum_type is not None:
                names = {v.name for v in field.enum_type.values}
                if not isinstance(one, str) or one not in names:
                    problems.append(f"{at}: enum {field.enum_type.full_name} must be written as a value name, got {one!r}")
            elif field.message_type is not None:
                full = field.message_type.full_name
                if full == "google.protobuf.Timestamp":
                    if not isinstance(one, str) or not RFC3339_Z.match(one):
                        problems.append(f"{at}: timestamp must be RFC 3339 in UTC (…Z), got {one!r}")
                elif full == "google.protobuf.Duration":
                    if not isinstance(one, str) or not re.match(r"^-?\d+(\.\d{1,9})?s$", one):
                        problems.append(f"{at}: duration must be written like \"3600s\", got {one!r}")
                else:
                    problems.extend(check_json_shape(field.message_type, one, at))
    return problems


def parse_json(cls, text, what, canonical):
    """Strict proto3 JSON parse plus the shape rules; returns the message.
    `canonical`: the text must also be what a proto3 JSON printer writes
    (for what push-dispatch publishes; an input may spell out defaults)."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise ContractError(f"{what}: not JSON: {e}")
    problems = check_json_shape(cls.DESCRIPTOR, raw, what)
    if problems:
        raise ContractError("\n".join(problems))
    msg = cls()
    try:
        json_format.Parse(text, msg, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise ContractError(f"{what}: json_format.Parse refused it: {e}")
    if not canonical:
        return msg
    # What the worker wrote is the canonical form (timestamps aside, whose
    # fraction digits may legitimately differ).
    canonical = json_format.MessageToDict(msg)
    stamps = {f.json_name for f in cls.DESCRIPTOR.fields
              if f.message_type is not None and f.message_type.full_name == "google.protobuf.Timestamp"}
    for key in set(raw) | set(canonical):
        if key in stamps:
            continue
        if raw.get(key) != canonical.get(key):
            raise ContractError(f"{what}.{key}: written {raw.get(key)!r}, proto3 JSON writes {canonical.get(key)!r}")
    return msg


def parse_binary(cls, data, what):
    msg = cls()
    try:
        msg.ParseFromString(data)
    except Exception as e:  # DecodeError, or anything the runtime raises on bad input
        raise ContractError(f"{what}: ParseFromString refused it: {e}")
    unknown = unknown_fields.UnknownFieldSet(msg)
    if len(unknown):
        numbers = sorted({f.field_number for f in unknown})
        raise ContractError(f"{what}: field numbers {numbers} are not in push.proto")
    return msg


def check_feedback(pool, path):
    cls = message_class(pool, "push.v1.TokenInvalidated")
    desc = cls.DESCRIPTOR
    platform_enum = desc.fields_by_name["platform"].enum_type
    reason_enum = desc.fields_by_name["reason"].enum_type
    results, seen, errors = [], set(), []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        raise ContractError(f"{path}: no messages to check")
    for n, line in enumerate(lines):
        what = f"message {n}"
        try:
            m = json.loads(line)
            data = bytes.fromhex(m["data_hex"])
            attrs = m["attributes"]
            content_type = attrs.get("content-type")
            if content_type == CONTENT_TYPES["binary"]:
                event = parse_binary(cls, data, what)
            elif content_type == CONTENT_TYPES["json"]:
                event = parse_json(cls, data.decode("utf-8"), what, canonical=True)
            else:
                raise ContractError(f"{what}: content-type {content_type!r} is neither of {sorted(CONTENT_TYPES.values())}")
            keys = set(attrs)
            if REQUIRED_ATTRIBUTES - keys:
                raise ContractError(f"{what}: attributes {sorted(REQUIRED_ATTRIBUTES - keys)} missing")
            if keys - REQUIRED_ATTRIBUTES - OPTIONAL_ATTRIBUTES:
                raise ContractError(f"{what}: undocumented attributes {sorted(keys - REQUIRED_ATTRIBUTES - OPTIONAL_ATTRIBUTES)}")
            platform = platform_enum.values_by_number[event.platform].name
            reason = reason_enum.values_by_number[event.reason].name
            expected = {
                "event_type": desc.full_name,
                "platform": PLATFORM_ATTRIBUTE.get(platform),
                "app": event.app,
                "reason": reason,
            }
            for key, want in expected.items():
                if attrs[key] != want:
                    raise ContractError(f"{what}: attribute {key}={attrs[key]!r}, the body says {want!r}")
            for key, value in attrs.items():
                if len(value.encode("utf-8")) > 1024:
                    raise ContractError(f"{what}: attribute {key} is over Pub/Sub's 1,024 bytes")
            if reason == "REASON_UNSPECIFIED" or platform == "PLATFORM_UNSPECIFIED":
                raise ContractError(f"{what}: platform {platform}, reason {reason}: a dead token always has both")
            for field, _ in event.ListFields():
                seen.add(field.name)
            results.append({
                "json": json_format.MessageToDict(event),
                "binary_hex": event.SerializeToString(deterministic=True).hex(),
            })
        except ContractError as e:
            errors.append(str(e))
        except (KeyError, ValueError) as e:
            errors.append(f"{what}: malformed input line: {e!r}")
    never = sorted(f.name for f in desc.fields if f.name not in seen)
    if not errors and never:
        errors.append(f"fields never set in any event: {never} (every field must be exercised)")
    if errors:
        raise ContractError("\n".join(errors))
    return results


def check_results(pool, path):
    cls = message_class(pool, "push.v1.PushResult")
    outcome_enum = cls.DESCRIPTOR.fields_by_name["targets"].message_type.fields_by_name["outcome"].enum_type
    results, errors = [], []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    if not lines:
        raise ContractError(f"{path}: no messages to check")
    for n, line in enumerate(lines):
        what = f"result {n}"
        try:
            m = json.loads(line)
            data = bytes.fromhex(m["data_hex"])
            attrs = m["attributes"]
            content_type = attrs.get("content-type")
            if content_type == CONTENT_TYPES["binary"]:
                result = parse_binary(cls, data, what)
            elif content_type == CONTENT_TYPES["json"]:
                result = parse_json(cls, data.decode("utf-8"), what, canonical=True)
            else:
                raise ContractError(f"{what}: content-type {content_type!r} is neither of {sorted(CONTENT_TYPES.values())}")
            keys = set(attrs)
            if RESULT_ATTRIBUTES - keys:
                raise ContractError(f"{what}: attributes {sorted(RESULT_ATTRIBUTES - keys)} missing")
            if keys - RESULT_ATTRIBUTES - OPTIONAL_ATTRIBUTES:
                raise ContractError(f"{what}: undocumented attributes {sorted(keys - RESULT_ATTRIBUTES - OPTIONAL_ATTRIBUTES)}")
            outcomes = [outcome_enum.values_by_number[t.outcome].name for t in result.targets]
            delivered = outcomes.count("TARGET_OUTCOME_DELIVERED")
            outcome = "delivered" if delivered == len(outcomes) else "failed" if delivered == 0 else "partial"
            expected = {
                "event_type": cls.DESCRIPTOR.full_name,
                "app": result.app,
                "outcome": outcome,
                "request_id": result.request_id,
                "complete": "true" if result.complete else "false",
            }
            for key, want in expected.items():
                if attrs[key] != want:
                    raise ContractError(f"{what}: attribute {key}={attrs[key]!r}, the body says {want!r}")
            if not result.targets or "TARGET_OUTCOME_UNSPECIFIED" in outcomes:
                raise ContractError(f"{what}: a result lists its targets, each with an outcome")
            results.append({
                "json": json_format.MessageToDict(result),
                "binary_hex": result.SerializeToString(deterministic=True).hex(),
            })
        except ContractError as e:
            errors.append(str(e))
        except (KeyError, ValueError) as e:
            errors.append(f"{what}: malformed input line: {e!r}")
    if errors:
        raise ContractError("\n".join(errors))
    return results


BLOCK = re.compile(r"<!--\s*contract:\s*push\.v1\.(\w+)\s*-->\s*\n```json\n(.*?)\n```", re.S)


def check_docs(pool, paths):
    counts, errors = {}, []
    for path in paths:
        with open(path) as f:
            text = f.read()
        for match in BLOCK.finditer(text):
            name, body = match.group(1), match.group(2)
            line = text[: match.start()].count("\n") + 1
            try:
                cls = message_class(pool, f"push.v1.{name}")
            except KeyError:
                errors.append(f"{path}:{line}: push.v1.{name} is not in push.proto")
                continue
            try:
                # Events are the worker's output: canonical; requests are input.
                parse_json(cls, body, f"{path}:{line}", canonical=name in ("TokenInvalidated", "PushResult"))
                counts[name] = counts.get(name, 0) + 1
            except ContractError as e:
                errors.append(str(e))
    if errors:
        raise ContractError("\n".join(errors))
    return counts


def main(argv):
    if len(argv) < 3 or argv[1] not in ("feedback", "results", "docs"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        pool = build_pool()
        if argv[1] == "feedback":
            print(json.dumps(check_feedback(pool, argv[2])))
        elif argv[1] == "results":
            print(json.dumps(check_results(pool, argv[2])))
        else:
            print(json.dumps(check_docs(pool, argv[2:])))
    except ContractError as e:
        print(f"contract violated:\n{e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
