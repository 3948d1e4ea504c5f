"""REST endpoints of the project itself: API keys, the audit trail, login, health."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.models import User
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.actor import actor_for_user
from accounts.models import ApiKey, KeyScope, Role, UserSecret
from accounts.permissions import IsAdmin, IsHumanUser, actor_of
from accounts.secrets import secret_delete, secret_set
from accounts.services import apikey_create, apikey_revoke
from accounts.throttle import WINDOW_S, client_address, login_failed, login_refused
from core.api import NewestFirstCursor
from core.errors import Forbidden, InvalidInput
from core.filters import AuditFilter
from core.models import AuditEvent


class ApiKeySerializer(serializers.ModelSerializer[ApiKey]):
    user = serializers.CharField(source="user.username", read_only=True)
    allowed_queues = serializers.SerializerMethodField()

    class Meta:
        model = ApiKey
        fields = [
            "access_key", "user", "name", "role", "scope", "allowed_queues", "worker_prefix",
            "created_at", "expires_at", "revoked_at", "last_used_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_allowed_queues(self, obj: ApiKey) -> list[str]:
        return [q.pk for q in obj.allowed_queues.all()]


class ApiKeyCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    role = serializers.ChoiceField(choices=Role.values, required=False)
    scope = serializers.ChoiceField(choices=KeyScope.values, required=False)
    expires_in_days = serializers.IntegerField(min_value=1, max_value=3650, required=False)
    allowed_queues = serializers.ListField(
        child=serializers.RegexField(r"^[0-9a-f]{32}$"), max_length=100, required=False
    )
    worker_prefix = serializers.RegexField(r"^[A-Za-z0-9_.,:@-]{0,100}$", required=False, allow_blank=True)
    user = serializers.CharField(max_length=150, required=False, help_text="admins: make the key for this user")


class ApiKeyCreatedSerializer(ApiKeySerializer):
    token = serializers.CharField(read_only=True, help_text="ACCESS.SECRET; shown once")
    secret = serializers.CharField(read_only=True, help_text="the secret alone; shown once")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "token", "secret"]
        read_only_fields = fields


def _created(new: Any) -> dict[str, Any]:
    data = dict(ApiKeySerializer(new.key).data)
    data.update(token=new.token, secret=new.secret)
    return data


class ApiKeyListView(APIView):
    """Your API keys (admins: everyone's); POST makes one and shows its secret once."""

    permission_classes = [IsHumanUser]

    @extend_schema(responses=ApiKeySerializer(many=True), operation_id="keys_list")
    def get(self, request: Request) -> Response:
        actor = actor_of(request)
        qs = ApiKey.objects.select_related("user").prefetch_related("allowed_queues")
        if not actor.is_admin:
            assert actor.user_id is not None
            qs = qs.filter(user_id=actor.user_id)
        return Response(ApiKeySerializer(qs[:1000], many=True).data)

    @extend_schema(request=ApiKeyCreateSerializer, responses={201: ApiKeyCreatedSerializer}, operation_id="keys_create")
    def post(self, request: Request) -> Response:
        ser = ApiKeyCreateSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        d = dict(ser.validated_data)
        actor = actor_of(request)
        username = d.pop("user", None)
        user = request.user
        if username:
            if not actor.is_admin:
                raise Forbidden("only admins make keys for other users", field="user")
            found = User.objects.filter(username=username).first()
            if found is None:
                raise InvalidInput(f"unknown user {username!r}", field="user")
            user = found
        assert isinstance(user, User)
        new = apikey_create(actor=actor, user=user, allowed_queue_ids=d.pop("allowed_queues", []), **d)
        return Response(_created(new), status=status.HTTP_201_CREATED)


class ApiKeyDetailView(APIView):
    permission_classes = [IsHumanUser]

    # 200 with the revoked key (revoked_at set): the schema said 204 and no body before.
    @extend_schema(responses={200: ApiKeySerializer}, operation_id="keys_revoke")
    def delete(self, request: Request, access_key: str) -> Response:
        key = apikey_revoke(actor=actor_of(request), access_key=access_key)
        return Response(ApiKeySerializer(key).data)


class LoginSerializer(serializers.Serializer[Any]):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=1024, trim_whitespace=False)
    key_name = serializers.CharField(max_length=100, required=False, allow_blank=True)


class LoginView(APIView):
    """Exchange a username and password for a new personal API key (the CLI's `muster login`)."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        request=LoginSerializer, responses={201: ApiKeyCreatedSerializer}, auth=[], operation_id="auth_login"
    )
    def post(self, request: Request) -> Response:
        ser = LoginSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        address, username = client_address(request._request), ser.validated_data["username"]
        if login_refused(address=address, username=username):
            return Response(
                {"error": {"code": "throttled", "message": "too many failed logins; wait a minute"}},
                status=status.HTTP_429_TOO_MANY_REQUESTS,
                headers={"Retry-After": str(WINDOW_S)},
            )
        user = authenticate(request._request, username=username, password=ser.validated_data["password"])
        if user is None or not isinstance(user, User):
            login_failed(address=address, username=username)
            return Response(
                {"error": {"code": "authentication_failed", "message": "wrong username or password"}},
                status=status.HTTP_401_UNAUTHORIZED,
            )

        new = apikey_create(
            actor=actor_for_user(user), user=user, name=ser.validated_data.get("key_name") or "muster login"
        )
        return Response(_created(new), status=status.HTTP_201_CREATED)


class AuditEventSerializer(serializers.ModelSerializer[AuditEvent]):
    class Meta:
        model = AuditEvent
        fields = ["id", "at", "actor_label", "object_type", "object_id", "action", "before", "after", "message"]
        read_only_fields = fields


class AuditPages(NewestFirstCursor):
    ordering = ("-at", "-id")


class AuditListView(ListAPIView[AuditEvent]):
    """The audit trail (admins), newest first, optionally for one object."""

    permission_classes = [IsAdmin]
    serializer_class = AuditEventSerializer
    pagination_class = AuditPages
    filter_backends: list[Any] = []

    def get_queryset(self) -> Any:
        found = AuditFilter(self.request.query_params, queryset=AuditEvent.objects.all())
        if not found.is_valid():
            raise ValidationError(found.errors)
        return found.qs

    @extend_schema(
        parameters=[OpenApiParameter("object_type", str), OpenApiParameter("object_id", str)],
        operation_id="audit_list",
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)


class SecretSerializer(serializers.Serializer[Any]):
    name = serializers.CharField()
    updated_at = serializers.DateTimeField()


class SecretValueSerializer(serializers.Serializer[Any]):
    value = serializers.CharField(max_length=65536, trim_whitespace=False)


class SecretListView(APIView):
    """Your secrets' names (values are never shown again); they reach your runs as environment variables."""

    permission_classes = [IsHumanUser]

    @extend_schema(responses=SecretSerializer(many=True), operation_id="secrets_list")
    def get(self, request: Request) -> Response:
        rows = UserSecret.objects.filter(owner_id=actor_of(request).user_id).values("name", "updated_at")
        return Response(SecretSerializer(rows, many=True).data)


class SecretDetailView(APIView):
    """Set (PUT) or delete one of your secrets."""

    permission_classes = [IsHumanUser]

    @extend_schema(request=SecretValueSerializer, responses=SecretSerializer, operation_id="secrets_set")
    def put(self, request: Request, name: str) -> Response:
        ser = SecretValueSerializer(data=request.data)
        ser.is_valid(raise_exception=True)
        secret = secret_set(actor=actor_of(request), name=name, value=ser.validated_data["value"])
        return Response(SecretSerializer({"name": secret.name, "updated_at": secret.updated_at}).data)

    @extend_schema(responses={204: None}, operation_id="secrets_delete")
    def delete(self, request: Request, name: str) -> Response:
        secret_delete(actor=actor_of(request), name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)
