// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title ModelRegistry: the on-chain trust anchor of VeriSeg.
/// @notice A model blob is identified by its BLAKE3-256 key (bytes32). Publishers register
///         keys, point deployment names at them (hot swap with a strictly increasing version,
///         never back to a key that name has used before) and revoke them for good. Edge
///         devices holding the anchorer role commit Merkle roots of their per-frame results,
///         each recorded with the stream it covers and the device (sender) that anchored it.
///         Every refusal is a custom error; every change is an event, so edge devices follow
///         the chain by logs instead of polling state.
contract ModelRegistry {
    // ------------------------------------------------------------------ roles
    bytes32 public constant PUBLISHER = keccak256("PUBLISHER");
    bytes32 public constant ANCHORER = keccak256("ANCHORER");

    address public owner;
    address public pendingOwner;  // two-step transfer: set by the owner, accepted by itself
    mapping(bytes32 role => mapping(address account => bool)) public hasRole;

    // ------------------------------------------------------------------ state
    struct Model {
        address publisher;    // slot 0 (20 bytes) + registeredAt (8) + revoked (1)
        uint64 registeredAt;
        bool revoked;
        string name;
        string uri;
        string reason;
    }

    struct Deployment {
        bytes32 key;
        uint64 version;
    }

    struct Anchor {
        bytes32 modelKey;
        bytes32 streamId;     // keccak256 of the stream id (UTF-8)
        uint64 firstSeq;      // firstSeq, lastSeq, blockNumber share one slot
        uint64 lastSeq;
        uint64 blockNumber;
        address anchorer;     // the device that anchored (msg.sender)
    }

    mapping(bytes32 key => Model) private _models;
    mapping(bytes32 nameHash => Deployment) private _deployments;
    mapping(bytes32 nameHash => mapping(bytes32 key => bool)) private _everDeployed;
    mapping(bytes32 root => Anchor) private _anchors;
    /// @notice Anchors per stream, so a verifier that reads a stream's Anchored logs knows
    ///         it saw all of them (a node that dropped logs cannot hide a conflicting anchor).
    mapping(bytes32 streamId => uint64) public streamAnchorCount;

    // ------------------------------------------------------------------ events
    event Registered(bytes32 indexed key, address indexed publisher, string name, string uri);
    event Deployed(bytes32 indexed nameHash, bytes32 indexed key, uint64 version, string deployment);
    event Revoked(bytes32 indexed key, address indexed by, string reason);
    event Anchored(
        bytes32 indexed merkleRoot, bytes32 indexed streamId, address indexed anchorer,
        bytes32 modelKey, uint64 firstSeq, uint64 lastSeq
    );
    event RoleGranted(bytes32 indexed role, address indexed account, address indexed by);
    event RoleRevoked(bytes32 indexed role, address indexed account, address indexed by);
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    // ------------------------------------------------------------------ errors
    error NotOwner(address caller);
    error NotPendingOwner(address caller);
    error MissingRole(bytes32 role, address account);
    error UnknownRole(bytes32 role);
    error ZeroAddress();
    error ZeroKey();
    error EmptyName();
    error KeyAlreadyRegistered(bytes32 key);
    error UnknownKey(bytes32 key);
    error KeyRevoked(bytes32 key);
    error AlreadyCurrent(string deployment, bytes32 key);
    error RollbackRefused(string deployment, bytes32 key, uint64 currentVersion);
    error UnknownDeployment(string deployment);
    error BadSeqRange(uint64 firstSeq, uint64 lastSeq);
    error RootAlreadyAnchored(bytes32 merkleRoot);

    // ------------------------------------------------------------------ modifiers
    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyRole(bytes32 role) {
        if (!hasRole[role][msg.sender]) revert MissingRole(role, msg.sender);
        _;
    }

    constructor() {
        owner = msg.sender;
        emit OwnershipTransferred(address(0), msg.sender);
        _setRole(PUBLISHER, msg.sender, true);
        _setRole(ANCHORER, msg.sender, true);
    }

    // ------------------------------------------------------------------ administration
    function grantRole(bytes32 role, address account) external onlyOwner {
        _checkRole(role);
        if (account == address(0)) revert ZeroAddress();
        _setRole(role, account, true);
    }

    function revokeRole(bytes32 role, address account) external onlyOwner {
        _checkRole(role);
        _setRole(role, account, false);
    }

    /// @notice Step one of two: name the next owner (a typo cannot lose the registry;
    ///         naming another address replaces the pending one).
    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner);
    }

    /// @notice Step two: the pending owner takes over. The previous owner loses the
    ///         publisher and anchorer roles it held, so a handover leaves it nothing; the
    ///         new owner grants itself (or others) the roles it needs.
    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotPendingOwner(msg.sender);
        address previous = owner;
        owner = msg.sender;
        pendingOwner = address(0);
        if (previous != msg.sender) {
            _setRole(PUBLISHER, previous, false);
            _setRole(ANCHORER, previous, false);
        }
        emit OwnershipTransferred(previous, msg.sender);
    }

    // ------------------------------------------------------------------ models
    function register(bytes32 key, string calldata name, string calldata uri)
        external
        onlyRole(PUBLISHER)
    {
        if (key == bytes32(0)) revert ZeroKey();
        if (bytes(name).length == 0) revert EmptyName();
        Model storage m = _models[key];
        if (m.publisher != address(0)) revert KeyAlreadyRegistered(key);
        m.publisher = msg.sender;
        m.registeredAt = uint64(block.timestamp);
        m.name = name;
        m.uri = uri;
        emit Registered(key, msg.sender, name, uri);
    }

    function deploy(string calldata deployment, bytes32 key)
        external
        onlyRole(PUBLISHER)
        returns (uint64 version)
    {
        if (bytes(deployment).length == 0) revert EmptyName();
        _requireActive(key);
        bytes32 nameHash = keccak256(bytes(deployment));
        Deployment storage d = _deployments[nameHash];
        if (d.key == key) revert AlreadyCurrent(deployment, key);
        if (_everDeployed[nameHash][key]) revert RollbackRefused(deployment, key, d.version);
        _everDeployed[nameHash][key] = true;
        version = d.version + 1;
        d.key = key;
        d.version = version;
        emit Deployed(nameHash, key, version, deployment);
    }

    function revoke(bytes32 key, string calldata reason) external onlyRole(PUBLISHER) {
        Model storage m = _models[key];
        if (m.publisher == address(0)) revert UnknownKey(key);
        if (m.revoked) revert KeyRevoked(key);
        m.revoked = true;
        m.reason = reason;
        emit Revoked(key, msg.sender, reason);
    }

    function status(bytes32 key)
        external
        view
        returns (bool registered, bool revoked, string memory reason, address publisher, uint64 registeredAt)
    {
        Model storage m = _models[key];
        return (m.publisher != address(0), m.revoked, m.reason, m.publisher, m.registeredAt);
    }

    function info(bytes32 key) external view returns (string memory name, string memory uri) {
        Model storage m = _models[key];
        return (m.name, m.uri);
    }

    function current(string calldata deployment) external view returns (bytes32 key, uint64 version) {
        Deployment storage d = _deployments[keccak256(bytes(deployment))];
        if (d.version == 0) revert UnknownDeployment(deployment);
        return (d.key, d.version);
    }

    // ------------------------------------------------------------------ anchoring
    /// @notice Commit the Merkle root of stream `streamId`'s results `firstSeq`..`lastSeq`
    ///         scored by `modelKey`; the sender is recorded as the device that anchored.
    function anchor(bytes32 merkleRoot, bytes32 streamId, uint64 firstSeq, uint64 lastSeq,
                    bytes32 modelKey)
        external
        onlyRole(ANCHORER)
    {
        if (merkleRoot == bytes32(0) || streamId == bytes32(0)) revert ZeroKey();
        if (firstSeq > lastSeq) revert BadSeqRange(firstSeq, lastSeq);
        _requireActive(modelKey);
        Anchor storage a = _anchors[merkleRoot];
        if (a.blockNumber != 0) revert RootAlreadyAnchored(merkleRoot);
        a.modelKey = modelKey;
        a.streamId = streamId;
        a.firstSeq = firstSeq;
        a.lastSeq = lastSeq;
        a.blockNumber = uint64(block.number);
        a.anchorer = msg.sender;
        streamAnchorCount[streamId] += 1;
        emit Anchored(merkleRoot, streamId, msg.sender, modelKey, firstSeq, lastSeq);
    }

    /// @notice blockNumber is 0 when the root was never anchored.
    function anchorOf(bytes32 merkleRoot)
        external
        view
        returns (bytes32 modelKey, bytes32 streamId, address anchorer, uint64 firstSeq,
                 uint64 lastSeq, uint64 blockNumber)
    {
        Anchor storage a = _anchors[merkleRoot];
        return (a.modelKey, a.streamId, a.anchorer, a.firstSeq, a.lastSeq, a.blockNumber);
    }

    // ------------------------------------------------------------------ internals
    function _requireActive(bytes32 key) private view {
        Model storage m = _models[key];
        if (m.publisher == address(0)) revert UnknownKey(key);
        if (m.revoked) revert KeyRevoked(key);
    }

    function _checkRole(bytes32 role) private pure {
        if (role != PUBLISHER && role != ANCHORER) revert UnknownRole(role);
    }

    function _setRole(bytes32 role, address account, bool on) private {
        if (hasRole[role][account] == on) return;
        hasRole[role][account] = on;
        if (on) emit RoleGranted(role, account, msg.sender);
        else emit RoleRevoked(role, account, msg.sender);
    }
}
