"""A raw test handler: a line-echo protocol that prefixes each answer with the worker's pid."""

import asyncio
import os


async def handler(listen_socket):
    async def client(reader, writer):
        line = await reader.readline()
        writer.write(f"{os.getpid()} {line.decode()}".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, sock=listen_socket)
    async with server:
        await server.serve_forever()
