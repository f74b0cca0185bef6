"""CRI ImageService: translate requests to the image store and puller, and answers back to protobuf."""

from __future__ import annotations

import asyncio
import json
import logging

from cri_api.v1 import api_pb2

from cripy.cri.convert import pull_namespace_from_pb
from cripy.cri.errors import grpc_method
from cripy.errors import InvalidArgument
from cripy.images.auth import parse_cri_auth
from cripy.images.pull import Puller, PullRequest
from cripy.images.reference import Reference, is_short_name
from cripy.images.store import Image, ImageStore
from cripy.rpc.server import Context

log = logging.getLogger(__name__)


class ImageService:
    def __init__(self, store: ImageStore, puller: Puller) -> None:
        self._store = store
        self._puller = puller

    @grpc_method
    async def ListImages(self, request: api_pb2.ListImagesRequest, context: Context) -> api_pb2.ListImagesResponse:
        wanted = request.filter.image.image if request.HasField("filter") else ""
        if wanted:
            image = await self._find(wanted)
            images = [image] if image else []
        else:
            images = await self._store.list()
        return api_pb2.ListImagesResponse(images=[image_to_pb(image) for image in images])

    @grpc_method
    async def ImageStatus(self, request: api_pb2.ImageStatusRequest, context: Context) -> api_pb2.ImageStatusResponse:
        image = await self._find(_image_name(request.image))
        if image is None:
            # CRI: an absent image is an empty answer, which is how kubelet learns it must pull.
            return api_pb2.ImageStatusResponse()
        info = {"info": json.dumps(_verbose_info(image))} if request.verbose else {}
        return api_pb2.ImageStatusResponse(image=image_to_pb(image), info=info)

    @grpc_method
    async def PullImage(self, request: api_pb2.PullImageRequest, context: Context) -> api_pb2.PullImageResponse:
        name = _image_name(request.image)
        auth = request.auth
        credentials = parse_cri_auth(
            auth.username, auth.password, auth.auth, auth.identity_token, auth.registry_token, auth.server_address
        )
        namespace = pull_namespace_from_pb(request)
        image = await self._puller.pull(PullRequest(name, credentials, auth.server_address, namespace))
        return api_pb2.PullImageResponse(image_ref=image.id)

    @grpc_method
    async def RemoveImage(self, request: api_pb2.RemoveImageRequest, context: Context) -> api_pb2.RemoveImageResponse:
        name = _image_name(request.image)
        await self._store.remove(name, await self._candidates(name))
        return api_pb2.RemoveImageResponse()

    @grpc_method
    async def ImageFsInfo(self, request: api_pb2.ImageFsInfoRequest, context: Context) -> api_pb2.ImageFsInfoResponse:
        usage = await self._store.fs_usage()
        fs = api_pb2.FilesystemUsage(
            timestamp=usage.timestamp_ns,
            fs_id=api_pb2.FilesystemIdentifier(mountpoint=usage.mountpoint),
            used_bytes=api_pb2.UInt64Value(value=usage.used_bytes),
            inodes_used=api_pb2.UInt64Value(value=usage.inodes_used),
        )
        return api_pb2.ImageFsInfoResponse(image_filesystems=[fs])

    async def _find(self, name: str) -> Image | None:
        return await self._store.find(name, await self._candidates(name))

    async def _candidates(self, name: str) -> list[Reference]:
        """Short names resolve through registries.conf's search list, as they do for a pull. A qualified name
        needs no registries.conf (the store normalizes it itself): ImageStatus is called often."""
        if not is_short_name(name):
            return []
        try:
            conf = await asyncio.to_thread(self._puller.registries)  # file reads: off the event loop
            return conf.candidates(name)
        except InvalidArgument:
            return []


def _image_name(spec: api_pb2.ImageSpec) -> str:
    name = spec.image.strip()
    if not name:
        raise InvalidArgument("image reference is empty")
    return name


def image_to_pb(image: Image) -> api_pb2.Image:
    uid, username = _user_of(image.user)
    message = api_pb2.Image(
        id=image.id,
        repo_tags=image.repo_tags,
        repo_digests=image.repo_digests,
        size=image.size,
        username=username,
        spec=api_pb2.ImageSpec(image=image.id),
        pinned=image.pinned,
    )
    if uid is not None:
        message.uid.value = uid
    return message


def _user_of(user: str) -> tuple[int | None, str]:
    """The image's User as CRI wants it: a numeric uid, or else a user name (the group part is dropped)."""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    if name.isdigit():
        return int(name), ""
    return None, name


def _verbose_info(image: Image) -> dict:
    return {
        "imageSpec": image.config,
        "manifestDigest": image.manifest_digest,
        "chainIDs": image.chain_ids,
        "pulledAt": image.pulled_at,
    }
