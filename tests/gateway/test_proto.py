"""The Envoy API messages: field numbers as Envoy's, generated modules in step with the .proto files."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from lockgate_server.gateway.proto.envoy.config.core.v3.base_pb2 import HeaderValue
from lockgate_server.gateway.proto.envoy.extensions.common.ratelimit.v3.ratelimit_pb2 import RateLimitDescriptor
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import (
    DESCRIPTOR as RLS_FILE,
)
from lockgate_server.gateway.proto.envoy.service.ratelimit.v3.rls_pb2 import (
    RateLimitRequest,
    RateLimitResponse,
)
from lockgate_server.gateway.rls import METHOD_NAME, SERVICE_NAME

SERVICE_ROOT = Path(__file__).resolve().parents[2] / "service"
PROTO_DIR = SERVICE_ROOT / "lockgate_server" / "gateway" / "proto"


def fields(message: Descriptor) -> dict[str, tuple[int, str]]:
    def type_name(field: FieldDescriptor) -> str:
        if field.message_type is not None:
            return field.message_type.full_name
        if field.enum_type is not None:
            return field.enum_type.full_name
        return {FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_UINT32: "uint32",
                FieldDescriptor.TYPE_BYTES: "bytes"}[field.type]  # fmt: skip

    return {field.name: (field.number, type_name(field)) for field in message.fields}


def test_the_service_and_method_are_envoys() -> None:
    service = RLS_FILE.services_by_name["RateLimitService"]
    assert service.full_name == SERVICE_NAME == "envoy.service.ratelimit.v3.RateLimitService"
    method = service.methods_by_name[METHOD_NAME]
    assert (method.input_type, method.output_type) == (RateLimitRequest.DESCRIPTOR, RateLimitResponse.DESCRIPTOR)


def test_field_names_and_numbers_match_the_envoy_api() -> None:
    common = "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor"
    response = "envoy.service.ratelimit.v3.RateLimitResponse"
    assert fields(RateLimitRequest.DESCRIPTOR) == {
        "domain": (1, "string"),
        "descriptors": (2, common),
        "hits_addend": (3, "uint32"),
    }
    assert fields(RateLimitDescriptor.DESCRIPTOR) == {
        "entries": (1, f"{common}.Entry"),
        "limit": (2, f"{common}.RateLimitOverride"),
        "hits_addend": (3, "google.protobuf.UInt64Value"),
    }
    assert fields(RateLimitDescriptor.Entry.DESCRIPTOR) == {"key": (1, "string"), "value": (2, "string")}
    assert fields(RateLimitDescriptor.RateLimitOverride.DESCRIPTOR) == {
        "requests_per_unit": (1, "uint32"),
        "unit": (2, "envoy.type.v3.RateLimitUnit"),
    }
    assert fields(RateLimitResponse.DESCRIPTOR) == {
        "overall_code": (1, f"{response}.Code"),
        "statuses": (2, f"{response}.DescriptorStatus"),
        "response_headers_to_add": (3, "envoy.config.core.v3.HeaderValue"),
        "request_headers_to_add": (4, "envoy.config.core.v3.HeaderValue"),
        "raw_body": (5, "bytes"),
        "dynamic_metadata": (6, "google.protobuf.Struct"),
        "quota": (7, f"{response}.Quota"),
    }
    assert fields(RateLimitResponse.DescriptorStatus.DESCRIPTOR) == {
        "code": (1, f"{response}.Code"),
        "current_limit": (2, f"{response}.RateLimit"),
        "limit_remaining": (3, "uint32"),
        "duration_until_reset": (4, "google.protobuf.Duration"),
        "quota": (5, f"{response}.Quota"),
    }
    assert fields(RateLimitResponse.RateLimit.DESCRIPTOR) == {
        "name": (3, "string"),
        "requests_per_unit": (1, "uint32"),
        "unit": (2, f"{response}.RateLimit.Unit"),
    }
    assert fields(HeaderValue.DESCRIPTOR) == {"key": (1, "string"), "value": (2, "string"), "raw_value": (3, "bytes")}
    codes = RateLimitResponse.Code
    assert [(codes.Name(n), n) for n in codes.values()] == [("UNKNOWN", 0), ("OK", 1), ("OVER_LIMIT", 2)]
    units = RateLimitResponse.RateLimit.Unit
    assert sorted((n, units.Name(n)) for n in units.values()) == [
        (0, "UNKNOWN"), (1, "SECOND"), (2, "MINUTE"), (3, "HOUR"), (4, "DAY"), (5, "MONTH"), (6, "YEAR"), (7, "WEEK")
    ]  # fmt: skip


@pytest.mark.parametrize(
    "proto",
    sorted(str(path.relative_to(SERVICE_ROOT)) for path in PROTO_DIR.rglob("*.proto")),
)
def test_the_generated_module_is_in_step_with_its_proto_file(proto: str, tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools (the dev extra) compiles the .proto files")
    include = Path(protoc.__file__).parent / "_proto"
    out = tmp_path / "set.pb"
    assert protoc.main(["protoc", f"-I{SERVICE_ROOT}", f"-I{include}", f"--descriptor_set_out={out}", proto]) == 0
    (compiled,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    module = importlib.import_module(proto.removesuffix(".proto").replace("/", ".") + "_pb2")
    committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    for message in compiled.message_type:
        _without_json_names(message)  # protoc adds them to descriptor sets, not to generated modules
    assert committed == compiled, f"{proto} changed: run `make proto` and commit the generated modules"


def _without_json_names(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _without_json_names(nested)
